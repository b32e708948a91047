#!/usr/bin/env bash
# Every test of wsgrace, on a fresh Debian machine with only Rust on it: installs the Debian
# packages the tests need when they are missing (chromium and chromium-driver for the browser
# test, redis-server for the cluster tests, nginx for the load-balancer tests, openssl for the
# auth tests' keys, nodejs for the browser module's tests), then runs the
# Rust tests (unit, integration, doc), the browser module's tests under Node's own runner, and
# the Autobahn conformance suite. .ci/run calls this same script after its lint steps.
#
# Without root (and without sudo) nothing is installed: a test whose program is missing then
# fails with the install command, it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
# Cargo's compiler probe (`rustc -`) reads /dev/null; see the script for why it may need mending.
scripts/repair-dev-null.sh
# Nothing here reads standard input.
exec </dev/null

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# tests/auth.rs makes its RS256, ES256 and EdDSA key pairs with the openssl CLI.
[ -x /usr/bin/openssl ] || missing+=(openssl)
# web/tests/ run under Node's own test runner.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        echo "not root and no sudo: install them with: apt-get install -y ${missing[*]}" >&2
        as_root=(false)
    fi
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if "${as_root[@]}" apt-get update -qq &&
        "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        echo "installed ${missing[*]}" >&2
    else
        echo "could not install ${missing[*]}; the tests that need them will fail" >&2
    fi
fi

cargo test --workspace

if [ -d web/tests ]; then
    command -v node >/dev/null 2>&1 || {
        echo "node is missing: apt-get install -y nodejs" >&2
        exit 1
    }
    node --test web/tests/
fi

# Autobahn TestSuite's server cases against examples/echo.rs (see CONFORMANCE.md).
bash .ci/conformance

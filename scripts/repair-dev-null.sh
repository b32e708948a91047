#!/usr/bin/env bash
# Makes /dev/null the character device it should be, before anything builds or tests.
#
# Seen on this project's CI machines: /dev/null was a regular file. Whatever a program wrote
# "to nowhere" stayed in it, and whatever read from it got those bytes back. Cargo asks rustc
# about the target with `rustc -`, standard input from /dev/null; when a build script of a
# dependency (rustix's feature probe) had just written rustc warnings "to /dev/null", that
# probe compiled the warnings and the build stopped: "failed to run `rustc` to learn about
# target-specific information" (the CI failures of stops 28 and 29).
#
# Run first by .ci/run and scripts/test.sh. Touches nothing but /dev/null, and only when it is
# not a character device.
set -u
[ -c /dev/null ] && exit 0

as_root=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
fi
if "${as_root[@]}" rm -f /dev/null && "${as_root[@]}" mknod -m 666 /dev/null c 1 3; then
    echo "/dev/null was a regular file: made it the null device again" >&2
else
    # Without the rights to mend it, empty it at least, so a build starts from nothing.
    echo "/dev/null is not the null device and could not be mended (mknod -m 666 /dev/null c 1 3 as root);" \
        "builds may read what other programs wrote there" >&2
    : >/dev/null || true
fi

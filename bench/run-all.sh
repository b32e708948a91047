#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md, wsgrace side by side with the baseline in each run,
# and writes the JSON lines to target/bench-results/. Loopback only; each scenario bounded.
# Usage: bench/run-all.sh   (from the repository root; builds release binaries first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wsgrace -p wsgrace-bench
OUT=target/bench-results
mkdir -p "$OUT"
LG=target/release/loadgen
W=target/release/wsgrace
B=target/release/baseline

run() {
    local name=$1
    shift
    echo "== $name: loadgen $*" >&2
    "$LG" --server "$W" --compare "$B" "$@" 2>/dev/null | tee "$OUT/$name.jsonl" | tail -1
}

for i in 1 2 3; do run "fanout-1000-$i" fanout 1000 3000; done
run fanout-10000 --timeout-secs 300 fanout 10000 300
run hold-10000 hold 10000
run drain-10000 drain 10000
run drain-10000-deaf-100 drain 10000 --deaf 100
run close-latency-100 --timeout-secs 300 close-latency 100

# wsgrace.v2 against v1 (issue 21): the same binary, v1 first, then v2; the third line is v2 / v1.
v2() {
    local name=$1
    shift
    echo "== $name: loadgen --against-v1 $*" >&2
    "$LG" --server "$W" --against-v1 "$@" 2>/dev/null | tee "$OUT/$name.jsonl" | tail -1
}
for i in 1 2 3; do v2 "hold-10000-v2-$i" hold 10000 --v2-rooms 10; done
for i in 1 2 3; do v2 "fanout-1000-v2-$i" fanout 1000 3000 --v2-rooms 10; done

# Across nodes, resume, rolling deploy (issue 13): no baseline (it has no broker, no resume);
# each starts its own redis-server (needs `redis-server` on PATH) and prints one JSON line.
one() {
    local name=$1
    shift
    echo "== $name: loadgen $*" >&2
    "$LG" --server "$W" "$@" 2>/dev/null | tee "$OUT/$name.jsonl" | head -c 300
    echo
}
for i in 1 2 3; do one "cluster-fanout-1000-$i" cluster-fanout 1000 3000; done
for i in 1 2 3; do one "cluster-fanout-100-$i" cluster-fanout 100 3000; done
for i in 1 2 3; do one "mass-resume-$i" mass-resume 1000 100; done
for i in 1 2 3; do one "mass-resume-1node-$i" mass-resume 1000 100 --broker redis --redis-nodes 1; done
for i in 1 2 3; do one "rolling-$i" rolling 2000 200; done
one rolling-history-1000 rolling 2000 200 --history-size 1000

# Presence (issue 22): joins into a room of 10,000 and of 100, presence on and off, in one run
# each (events on as configured, then off for like-for-like); rolling above counts presence.
one presence-joins-matrix --timeout-secs 600 presence-joins --matrix 10000 1000
one presence-joins-matrix-events-off --timeout-secs 600 presence-joins --matrix 10000 1000 --events off

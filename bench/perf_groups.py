#!/usr/bin/env python3
"""Where a server's CPU went, by kind of work, from a `perf record -g` file (as
`loadgen fanout --perf-record DIR` writes): every sample is put in one group and the groups'
shares printed. A sample in the kernel goes by its call chain (the send path if `sendto`
is on it, reads, epoll, wake-ups, softirq, other); a sample in user space by its own function
(frame copy, allocation, JSON, the outbox, the writer task, the fan-out shard, actix, tokio,
...): release builds keep no frame pointers, so a user sample's chain is its leaf alone and
what inlining folded into a caller counts as the caller. It only reads the perf file.

    python3 bench/perf_groups.py /tmp/prof/wsgrace.fanout.perf.data [--json] [--top 25]
"""

import argparse
import collections
import json
import re
import subprocess
import sys

# Kernel samples: the first rule whose pattern matches any frame of the chain.
KERNEL = [
    ("kernel: send path (sendto, TCP, loopback into the client's socket)",
     r"^(__sys_sendto|__x64_sys_sendto|__sys_sendmsg|sock_sendmsg|tcp_sendmsg|sock_write_iter)$"),
    ("kernel: socket reads", r"^(__sys_recvfrom|sock_recvmsg|tcp_recvmsg|sock_read_iter|ksys_read)$"),
    ("kernel: epoll_wait", r"^(do_epoll_wait|ep_poll|__x64_sys_epoll_wait|__x64_sys_epoll_pwait)$"),
    ("kernel: futex, scheduler (thread wake-ups)",
     r"^(futex_wake|futex_wait|__x64_sys_futex|schedule|__schedule|try_to_wake_up)$"),
    ("kernel: softirq outside a send (ACKs, timers)", r"^(handle_softirqs|net_rx_action)$"),
    ("kernel: other (syscall entry, timers, interrupts)", r"."),
]

# User samples: the first rule whose pattern matches the sampled function.
USER = [
    ("frame copy (memmove/memcpy)", r"memmove|memcpy"),
    ("allocation (malloc/free)", r"malloc|_int_free|cfree|\bfree\b|realloc|_int_realloc|__rust_alloc|__rust_dealloc|__rdl_"),
    ("JSON (serde_json)", r"serde_json|serde::"),
    ("wsgrace: outbox offer (queue push, writer wake-up)", r"OutboundQueue"),
    ("wsgrace: writer task (batch, copy, write)", r"OutboundBody|write_out|LingeringStream|poll_write_shared"),
    ("wsgrace: fan-out shard", r"wsgrace::rooms::fanout"),
    ("wsgrace: other (sessions, supervisor, rooms)", r"wsgrace"),
    ("floor_server", r"floor_server"),
    ("actix: actors, mailboxes, arbiters", r"actix::|actix_rt::|<actix::"),
    ("actix-server/http: connection service", r"actix_server|actix_http|actix_service|actix_codec|actix_web"),
    ("tokio: task scheduling, wakers, I/O readiness", r"tokio::|mio::|<tokio|<mio"),
    ("libc: syscall stubs, locks", r"^(__send|send|__libc|__GI|pthread|__lll|syscall|epoll_wait|__recv|recv|read|write)"),
    ("other user space", r"."),
]

FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


def samples(path):
    """Yields each sample's frames, leaf first, as (symbol, dso)."""
    proc = subprocess.Popen(
        ["perf", "script", "-i", path, "-F", "comm,tid,ip,sym,dso"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    frames = []
    for line in proc.stdout:
        if not line.strip():
            if frames:
                yield frames
            frames = []
            continue
        m = FRAME.match(line)
        if m:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
            frames.append((sym, m.group(2)))
    if frames:
        yield frames
    proc.wait()


def classify(frames, kernel_rules, user_rules):
    leaf_sym, leaf_dso = frames[0]
    if "kernel" in leaf_dso:
        names = [s for s, _ in frames]
        for group, pattern in kernel_rules:
            if any(pattern.search(n) for n in names):
                return group
    for group, pattern in user_rules:
        if pattern.search(leaf_sym):
            return group
    return "other user space"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--top", type=int, default=20, help="also list the N hottest functions")
    args = ap.parse_args()
    kernel_rules = [(g, re.compile(p)) for g, p in KERNEL]
    user_rules = [(g, re.compile(p)) for g, p in USER]
    groups = collections.Counter()
    leaves = collections.Counter()
    total = 0
    for frames in samples(args.data):
        total += 1
        groups[classify(frames, kernel_rules, user_rules)] += 1
        leaves[frames[0]] += 1
    if total == 0:
        sys.exit(f"{args.data}: no samples (is perf installed, is the file readable?)")
    pct = lambda n: round(100.0 * n / total, 2)
    if args.json:
        print(json.dumps({
            "samples": total,
            "groups": {g: pct(n) for g, n in groups.most_common()},
            "top": [{"pct": pct(n), "sym": s, "dso": d} for (s, d), n in leaves.most_common(args.top)],
        }))
        return
    print(f"{args.data}: {total} samples")
    for group, n in groups.most_common():
        print(f"{pct(n):6.2f} %  {group}")
    print(f"\ntop {args.top} functions (self):")
    for (sym, dso), n in leaves.most_common(args.top):
        print(f"{pct(n):6.2f} %  {dso.rsplit('/', 1)[-1]:18.18}  {sym[:100]}")


if __name__ == "__main__":
    main()

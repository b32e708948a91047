#!/usr/bin/env python3
"""Where a server's CPU went, by kind of work: the self time of each sampled function in a
`perf record` file (from `loadgen fanout --perf-record DIR`), summed into groups (the kernel's
TCP send path, frame copies, allocation, JSON, actix's mailboxes, tokio's task machinery,
wsgrace's own code, ...). Reads `perf report --no-children` and prints one table (and
`--json` for one JSON object). The grouping is by symbol name, first match wins; what
inlining folded into a caller counts as the caller. It only reads the perf file.

    python3 bench/perf_groups.py /tmp/prof/wsgrace.fanout.perf.data [--json] [--top 25]
"""

import argparse
import json
import re
import subprocess
import sys

# (group, pattern on "[k] symbol" or "[.] symbol"), first match wins.
GROUPS = [
    ("kernel: TCP/IP send and loopback delivery",
     r"^\[k\] .*(tcp_|__tcp|ip_|ip6_|__ip|sk_|skb|__skb|sock_|__sock|inet_|__sys_sendto|"
     r"__x64_sys_sendto|sendto|sendmsg|loopback|netif|net_rx|__napi|napi_|process_backlog|"
     r"dev_queue_xmit|__dev_|dev_hard_start|validate_xmit|nf_|__netif|do_softirq|"
     r"__do_softirq|handle_softirqs|__local_bh_enable|_copy_from_iter|copy_from_iter|"
     r"copy_user|rep_movs|csum|__alloc_skb|kmalloc_reserve|page_frag|mem_cgroup_charge_skmem|"
     r"__sk_mem|tcp_|neigh|eth_|fib_|rt_|dst_|__kfree_skb|kfree_skb|consume_skb|"
     r"skb_release|sock_def_readable|__wake_up_sync_key|ep_poll_callback|sock_wfree)"),
    ("kernel: epoll, scheduler, syscall entry, other",
     r"^\[k\] "),
    ("frame copy (memmove/memcpy)",
     r"^\[\.\] .*(memmove|memcpy|__memcpy|__memmove|extend_from_slice|copy_nonoverlapping)"),
    ("allocation (malloc/free)",
     r"^\[\.\] .*(malloc|_int_free|cfree|\bfree\b|realloc|__rust_alloc|__rust_dealloc|"
     r"__rdl_|_int_realloc|tcache|arena_get|unlink_chunk|alloc::raw_vec|RawVec)"),
    ("JSON (serde_json)", r"^\[\.\] .*(serde_json|serde::)"),
    ("actix actor mailboxes and contexts",
     r"^\[\.\] .*(actix::|actix_rt::|<actix|ContextFut|AddressReceiver|Envelope|Mailbox)"),
    ("actix-http / actix-server / codec",
     r"^\[\.\] .*(actix_http|actix_server|actix_codec|actix_service|actix_web)"),
    ("wsgrace: outbound queue and writer",
     r"^\[\.\] .*(wsgrace::connection::transport|OutboundBody|OutboundQueue|write_out|"
     r"LingeringStream|poll_write_shared)"),
    ("wsgrace: fan-out shard",
     r"^\[\.\] .*(wsgrace::rooms::fanout|Shard|Deliver)"),
    ("wsgrace: other (sessions, supervisor, rooms)", r"^\[\.\] .*wsgrace"),
    ("tokio: tasks, wake-ups, I/O driver",
     r"^\[\.\] .*(tokio::|mio::|<tokio|<mio|epoll_wait|RawWakerVTable|waker|Waker)"),
    ("floor_server", r"^\[\.\] .*floor_server"),
    ("libc other (syscall stubs, locks)", r"^\[\.\] .*(__libc|__GI|send|pthread|__lll|futex|syscall)"),
    ("other user space", r"^\[\.\] "),
]

LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+(\S+)\s+(\[[k.]\])\s+(.*)$")


def report(path):
    out = subprocess.run(
        ["perf", "report", "-i", path, "--stdio", "--no-children", "-g", "none",
         "--sort", "comm,dso,sym", "--percent-limit", "0"],
        capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"perf report failed: {out.stderr.strip()}")
    rows = []
    for line in out.stdout.splitlines():
        m = LINE.match(line)
        if m:
            pct, _comm, dso, kind, sym = m.groups()
            rows.append((float(pct), dso, f"{kind} {sym.strip()}"))
    return rows


def group(rows):
    totals = {name: 0.0 for name, _ in GROUPS}
    compiled = [(name, re.compile(p)) for name, p in GROUPS]
    for pct, _dso, sym in rows:
        for name, pattern in compiled:
            if pattern.search(sym):
                totals[name] += pct
                break
    return totals


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--top", type=int, default=20, help="also list the N hottest symbols")
    args = ap.parse_args()
    rows = report(args.data)
    totals = group(rows)
    if args.json:
        print(json.dumps({"groups": totals,
                          "top": [{"pct": p, "dso": d, "sym": s} for p, d, s in rows[:args.top]]}))
        return
    print(f"{args.data}: {len(rows)} symbols")
    for name, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
        if pct > 0:
            print(f"{pct:6.2f} %  {name}")
    print(f"\ntop {args.top} symbols (self):")
    for pct, dso, sym in rows[:args.top]:
        print(f"{pct:6.2f} %  {dso:24.24}  {sym[:110]}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Kernel memory of clients that never read, in a flooded room (BENCHMARKS.md, issue 9.3).

Starts the release server once per `session.send_buffer_bytes` value given, joins N raw
WebSocket clients to one room that never read after their handshake, floods the room from
one more client that reads (and discards) its own copies, and then reads every server-side
socket's kernel memory from `ss -tmn` (skmem: w = bytes queued for sending, tb = the send
buffer's size) and /proc/net/sockstat. Loopback only, bounded in count and time.

Usage: python3 bench/slow_consumers.py [--clients 1000] [--messages 2000] [--size 1000]
                                       [--sndbuf 0,262144,65536]
(from the repository root, after `cargo build --release`)
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame."""
    mask = b"\x12\x34\x56\x78"
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def join(port: int, room: str):
    """A client in `room`, past its 101 (it reads nothing more unless told)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /ws?room={room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:40])
    return reader, writer


def start_server(sndbuf: int) -> tuple[subprocess.Popen, int]:
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(f"[session]\nsend_buffer_bytes = {sndbuf}\noutbound_queue = 100000\n")
    config.close()
    proc = subprocess.Popen(
        ["target/release/wsgrace", "--config", config.name, "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline().strip()
    port = int(line.rsplit(":", 1)[1])
    return proc, port


def server_socket_memory(port: int) -> tuple[int, int, list[int]]:
    """(sum of w, sum of tb, per-socket w) over the server's established sockets."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    queued, sizes, per = 0, 0, []
    for m in re.finditer(r"skmem:\(([^)]*)\)", out):
        fields = dict(re.findall(r"([a-z]+)(\d+)", m.group(1)))
        queued += int(fields.get("w", 0))
        sizes += int(fields.get("tb", 0))
        per.append(int(fields.get("w", 0)))
    return queued, sizes, per


def sockstat_pages() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                return int(line.split("mem")[1].split()[0])
    return 0


async def run(sndbuf: int, clients: int, messages: int, size: int) -> dict:
    proc, port = start_server(sndbuf)
    try:
        base_pages = sockstat_pages()
        deaf = []
        for i in range(clients):
            deaf.append(await join(port, "flood"))
        r, w = await join(port, "flood")

        async def drain_own():
            try:
                while await r.read(1 << 20):
                    pass
            except Exception:
                pass

        drainer = asyncio.create_task(drain_own())
        text = frame(b"x" * size)
        started = time.monotonic()
        for _ in range(messages):
            w.write(text)
            await w.drain()
        # Let the server push what it can; the deaf clients stop it soon.
        await asyncio.sleep(3)
        queued, sizes, per = server_socket_memory(port)
        pages = sockstat_pages() - base_pages
        drainer.cancel()
        for _, dw in deaf:
            dw.close()
        w.close()
        per.sort()
        return {
            "send_buffer_bytes": sndbuf,
            "clients": clients,
            "server_sockets": len(per),
            "server_queued_total_mib": round(queued / 2**20, 1),
            "server_sndbuf_total_mib": round(sizes / 2**20, 1),
            "server_queued_per_socket_kib_p50": round(per[len(per) // 2] / 1024, 1) if per else 0,
            "server_queued_per_socket_kib_max": round(per[-1] / 1024, 1) if per else 0,
            "tcp_mem_pages_delta_all_sockets": pages,
            "flood_seconds": round(time.monotonic() - started, 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--sndbuf", default="0,262144,65536")
    a = p.parse_args()
    for sndbuf in [int(v) for v in a.sndbuf.split(",")]:
        result = asyncio.run(run(sndbuf, a.clients, a.messages, a.size))
        print(result, flush=True)


if __name__ == "__main__":
    if not os.path.exists("target/release/wsgrace"):
        sys.exit("build first: cargo build --release")
    main()

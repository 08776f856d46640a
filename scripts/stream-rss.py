#!/usr/bin/env python3
"""Opens N event streams to a running flashsale and prints its RSS before and after.

Usage: scripts/stream-rss.py PID HOST:PORT SALE_ID [STREAMS=2000] [PER_ADDRESS=250]

Streams are spread over source addresses 127.0.0.2, 127.0.0.3, ... (PER_ADDRESS each), so a
server with its default per-address caps (256 streams, 512 connections) accepts them all.
Loopback only. Prints the RSS (KiB, from `ps -o rss=`) with no stream, with all of them open
(after the first event on each), and the per-stream figure.
"""
import asyncio
import subprocess
import sys


def rss_kib(pid):
    return int(subprocess.check_output(["ps", "-o", "rss=", "-p", str(pid)]).strip())


async def open_stream(host, port, sale, source):
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    writer.write(f"GET /api/sales/{sale}/events HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace").splitlines()[0])
    await reader.readuntil(b"\n\n")  # the first event
    return reader, writer


async def main():
    pid, target, sale = sys.argv[1], sys.argv[2], sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    per_address = int(sys.argv[5]) if len(sys.argv) > 5 else 250
    host, port = target.rsplit(":", 1)
    before = rss_kib(pid)
    streams = []
    for start in range(0, count, per_address):
        source = f"127.0.0.{2 + start // per_address}"
        batch = min(per_address, count - start)
        streams += await asyncio.gather(
            *(open_stream(host, int(port), sale, source) for _ in range(batch))
        )
    await asyncio.sleep(2)  # let the server settle (a heartbeat may pass)
    after = rss_kib(pid)
    print(f"streams open: {len(streams)}")
    print(f"RSS before: {before} KiB, with the streams: {after} KiB, "
          f"growth {after - before} KiB ({(after - before) / len(streams):.1f} KiB per stream)")
    for _, writer in streams:
        writer.close()


asyncio.run(main())

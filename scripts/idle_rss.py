#!/usr/bin/env python3
"""Resident memory per idle keep-alive connection of one server process (issue 15).

Usage: scripts/idle_rss.py HOST:PORT PID PATH [CONNECTIONS]

Opens CONNECTIONS (default 10,000) HTTP/1.1 keep-alive connections to HOST:PORT, has each make
one GET PATH and read the whole answer (so every connection is a real, served, keep-alive
connection, not a bare TCP handshake), then leaves them all open and idle. The resident set
(VmRSS of PID) is read before the first connection and after all are open and idle (twice, a
second apart, keeping the larger). Prints one tab-separated line:
    connections  rss_before_kib  rss_after_kib  kib_per_connection
A connection the server closed or refused is counted as an error and the script fails, so a
figure is never printed for fewer connections than asked for.
"""

import asyncio
import resource
import sys
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def open_one(host: str, port: int, request: bytes, held: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"answer was {head.splitlines()[0]!r}")
    await reader.readexactly(length)
    held.append((reader, writer))


async def main() -> None:
    address, pid, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 10_000
    host, port = address.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode()
    before = rss_kib(pid)
    held: list = []
    # A bounded number of handshakes at a time: the server's accept backlog is finite.
    for start in range(0, count, 500):
        batch = [open_one(host, int(port), request, held) for _ in range(start, min(start + 500, count))]
        await asyncio.gather(*batch)
    await asyncio.sleep(1)
    after = rss_kib(pid)
    await asyncio.sleep(1)
    after = max(after, rss_kib(pid))
    # Every connection must still be open: a server that dropped idle ones would look cheap.
    for reader, _ in held:
        if reader.at_eof():
            raise RuntimeError("the server closed an idle connection")
    print(f"{count}\t{before}\t{after}\t{(after - before) / count:.1f}")
    for _, writer in held:
        writer.close()


if __name__ == "__main__":
    started = time.monotonic()
    asyncio.run(main())
    print(f"# {time.monotonic() - started:.1f} s", file=sys.stderr)

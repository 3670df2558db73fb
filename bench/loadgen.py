"""A small HTTP/1.1 keep-alive load generator, run as its own process by the harness.

    python -m bench.loadgen --url http://127.0.0.1:8888/healthz --concurrency 32 --seconds 5

Each of ``concurrency`` connections sends one request at a time and waits for its answer
(closed loop). Prints one JSON object: requests, errors, requests/s, p50/p99 latency in ms,
and the CPU seconds this process used, so the report can show whether the generator itself
was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from urllib.parse import urlsplit


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      requests: list[bytes], turn: list[int],
                      deadline: float, latencies: list[float], errors: list[int],
                      interval: float = 0.0, first: float = 0.0) -> None:
    due = first
    try:
        while time.perf_counter() < deadline:
            raw = requests[turn[0] % len(requests)]
            turn[0] += 1
            started = time.perf_counter()
            if interval:  # open loop: latency counts from when the request was due to go
                if due > started:
                    await asyncio.sleep(due - started)
                started, due = due, due + interval
            writer.write(raw)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not status_line.startswith(b"HTTP/1.1 2"):
                errors.append(1)
    finally:
        writer.close()


async def run(url: str, concurrency: int, seconds: float, headers: list[str],
              bodies: list[bytes] | None = None, rate: float = 0.0,
              paths: list[str] | None = None) -> dict[str, float]:
    """Closed loop (each connection sends when its answer came), or with ``rate`` open loop:
    requests go at that total rate, spread evenly over the connections, whatever the server
    does, and a late answer counts from when its request was due (no coordinated omission)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if bodies:  # POST each body once, in turn (a body per request: distinct work)
        requests = [("\r\n".join([f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
                                   "Connection: keep-alive", "Content-Type: application/json",
                                   f"Content-Length: {len(b)}", *headers, "", ""])
                     ).encode() + b for b in bodies]
    else:  # GET the URL's path, or each of ``paths`` in turn
        requests = ["\r\n".join([f"GET {p} HTTP/1.1", f"Host: {host}:{port}",
                                  "Connection: keep-alive", *headers, "", ""]).encode()
                    for p in paths or [path]]
    turn = [0]
    latencies: list[float] = []
    errors: list[int] = []
    # Connections are opened before the clock starts: clients keep theirs alive, and an open
    # loop would otherwise count 32 connects (and the backlog they leave) against the server.
    streams = await asyncio.gather(*[asyncio.open_connection(host, port)
                                     for _ in range(concurrency)])
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + seconds
    interval = concurrency / rate if rate else 0.0
    await asyncio.gather(*[_connection(reader, writer, requests, turn, deadline, latencies,
                                       errors, interval, started + i * interval / concurrency)
                           for i, (reader, writer) in enumerate(streams)])
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))] \
            if latencies else 0.0

    return {"requests": len(latencies), "errors": len(errors),
            "rps": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "seconds": elapsed, "loadgen_cpu_pct": 100 * cpu / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--bodies", help="a file of JSON bodies, one per line: POST them")
    parser.add_argument("--paths", help="a file of paths, one per line: GET them in turn")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open loop at this many requests/s in all (default: closed loop)")
    args = parser.parse_args()
    bodies = None
    if args.bodies:
        with open(args.bodies, "rb") as f:
            bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    paths = None
    if args.paths:
        with open(args.paths, encoding="utf-8") as f:
            paths = [line.strip() for line in f if line.strip()]
    print(json.dumps(asyncio.run(run(args.url, args.concurrency, args.seconds, args.header,
                                     bodies, args.rate, paths))))


if __name__ == "__main__":
    main()

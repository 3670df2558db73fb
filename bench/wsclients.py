"""WebSocket watchers for the push benchmark, run as their own process.

    python -m bench.wsclients --url ws://127.0.0.1:8888/ws --topic departure:D --clients 100

Opens ``clients`` connections, subscribes each to ``topic`` (Keyun) or just waits (the raw
baseline server sends without a subscription), prints ``ready``, then counts event frames for
``seconds`` after the first one. Frames whose data carry ``t`` (the producer's wall clock, ms)
give the event-to-client latency. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from typing import Any

from tornado.websocket import websocket_connect

_SENT = re.compile(r'"t":([0-9.]+)')


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", default="")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--hold", action="store_true",
                        help="only hold the connections open for --seconds after 'ready'")
    args = parser.parse_args()
    conns = []
    for _ in range(args.clients):
        conn = await websocket_connect(args.url, max_message_size=1 << 20)
        await conn.read_message()  # welcome (Keyun) or hello (raw)
        if args.topic:
            await conn.write_message(json.dumps({"op": "subscribe", "topic": args.topic}))
            while json.loads(await conn.read_message())["type"] != "subscribed":
                pass
        conns.append(conn)
    print("ready", flush=True)
    if args.hold:
        await asyncio.sleep(args.seconds)
        alive = sum(1 for c in conns if c.protocol is not None)
        for c in conns:
            c.close()
        json.dump({"clients": len(conns), "alive": alive}, sys.stdout)
        return
    frames, lost, latencies = 0, 0, []
    first: list[float] = []

    started = asyncio.Event()

    async def reader(conn: Any) -> None:
        nonlocal frames, lost
        while True:
            message = await conn.read_message()
            if message is None:
                return
            now = time.time() * 1000
            if not first:
                first.append(time.perf_counter())
                started.set()
            if message.startswith('{"type":"event"') or message.startswith('{"type":"raw"'):
                frames += 1
                sent = _SENT.search(message)
                if sent:
                    latencies.append(now - float(sent.group(1)))
            elif message.startswith('{"type":"resync"'):
                lost += 1

    tasks = [asyncio.ensure_future(reader(c)) for c in conns]
    await started.wait()
    await asyncio.sleep(args.seconds)
    elapsed = time.perf_counter() - first[0]
    counted = frames
    for t in tasks:
        t.cancel()
    for c in conns:
        c.close()
    latencies.sort()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    json.dump({"frames": counted, "seconds": elapsed, "resyncs": lost,
               "frames_per_s": counted / elapsed,
               "p50_ms": latencies[len(latencies) // 2] if latencies else 0.0,
               "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
               "client_cpu_s": usage.ru_utime + usage.ru_stime}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())

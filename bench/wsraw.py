"""The raw baseline of the push benchmark: a bare Tornado WebSocket server that, once told
to start, writes one pre-built frame to every connected socket in a loop (awaiting each round
of writes, as Keyun awaits its writes) — no Redis, no topics, no queues.

    python -m bench.wsraw --port 9400 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio

from tornado.web import Application, RequestHandler
from tornado.websocket import WebSocketHandler

SOCKETS: set[WebSocketHandler] = set()
FRAME = b'{"type":"raw","topic":"departure:RAW","seq":1,"event":"seats","data":' \
        b'{"change":"held","seats":[12],"masks":[3],"from_seq":0,"to_seq":2,' \
        b'"remaining":40,"status":"on_sale","channels":{}}}'


class Socket(WebSocketHandler):
    def open(self) -> None:
        SOCKETS.add(self)
        self.write_message(b'{"type":"hello"}')

    def on_close(self) -> None:
        SOCKETS.discard(self)


class Go(RequestHandler):
    async def post(self) -> None:
        seconds = float(self.get_argument("seconds", "5"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds + 1.0
        rounds = 0
        while loop.time() < deadline and SOCKETS:
            await asyncio.gather(*[s.write_message(FRAME) for s in list(SOCKETS)],
                                 return_exceptions=True)
            rounds += 1
        self.finish({"rounds": rounds})


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    Application([(r"/ws", Socket), (r"/go", Go)]).listen(args.port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

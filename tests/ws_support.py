"""A WebSocket test client for Keyun's ``/ws`` (Tornado's client: it stops reading from the
socket while a received message waits, so a client that does not read pushes back)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect


class Ws:
    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, base_url: str, token: str | None = None) -> Ws:
        url = base_url.replace("http://", "ws://") + "/ws"
        if token:
            url += f"?access_token={token}"
        ws = cls(await websocket_connect(url, connect_timeout=5))
        welcome = await ws.recv()
        assert welcome["type"] == "welcome", welcome
        return ws

    async def send(self, payload: Any) -> None:
        await self.conn.write_message(payload if isinstance(payload, str | bytes)
                                      else json.dumps(payload))

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        message = await asyncio.wait_for(self.conn.read_message(), within)
        assert message is not None, f"closed: {self.conn.close_code} {self.conn.close_reason}"
        return json.loads(message)  # type: ignore[no-any-return]

    async def until(self, match: Callable[[dict[str, Any]], bool],
                    within: float = 5.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The first frame matching, and every frame before it."""
        seen = []
        deadline = time.monotonic() + within
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if match(frame):
                return frame, seen
            seen.append(frame)

    async def nothing_for(self, seconds: float) -> list[dict[str, Any]]:
        """Frames that arrive within ``seconds`` (expected: none)."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(await self.recv(left))
            except TimeoutError:
                break
        return got

    async def subscribe(self, topic: str, since: int | None = None
                        ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Subscribe; returns the 'subscribed' frame and the frames before it (snapshot or
        missed events)."""
        await self.send({"op": "subscribe", "topic": topic,
                         **({"since": since} if since is not None else {})})
        return await self.until(lambda f: f["type"] in ("subscribed", "error")
                                and f.get("topic") == topic)

    async def closed(self, within: float = 10.0) -> int | None:
        """Wait for the server to close; returns its close code."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(self.conn.read_message(),
                                             deadline - time.monotonic())
            if message is None:
                code = self.conn.close_code
                self.conn.close()
                return code
        raise TimeoutError("still open")

    def close(self) -> None:
        self.conn.close()


class StalledClient:
    """A raw WebSocket client with a tiny receive buffer that subscribes and then never reads
    again: what a phone in a tunnel looks like to the server."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def read_all(self, seconds: float) -> bytes:
        """Everything the server sent (or still sends) within ``seconds``."""
        self.sock.settimeout(0.5)
        data = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()

"""``GET /ws``: live seat and order events over a WebSocket.

Client → server (one JSON object per frame, at most 4 KiB):
  {"op": "auth", "token": "<access token>"}          (or ?access_token= on the URL)
  {"op": "subscribe", "topic": "departure:<id>" | "order:<order_no>" | "alerts:ops" |
   "warnings:<division prefix>" (peak warnings of a region: 44, 4401, 440111), "since": <seq>?}
  {"op": "unsubscribe", "topic": ...}
  {"op": "ping"}
Server → client:
  {"type": "welcome", "authenticated", "limits", "ping_seconds"}
  {"type": "snapshot", "topic", "seq", "data"}     state as of seq (no since, or too old)
  {"type": "event", "topic", "seq", "event", "data"}  every event after, seq + 1 each
  {"type": "subscribed" | "unsubscribed", "topic", "seq"}
  {"type": "resync", "topics", "reason"}           this client fell behind: events were
                                                   dropped; subscribe again with since
  {"type": "error", "code", "message", "op"?, "topic"?}
  {"type": "pong", "at"}

Anyone may watch a departure's seats; an order only its buyer or staff who may see it.
A bad token on the URL is refused with 403 before the upgrade; a bad ``auth`` frame closes
with 4401. A client that floods frames gets WS_RATE_LIMITED errors, then is closed (1008);
one that stops reading has its queue dropped and is told to resync, then is closed (4008).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.web import URLSpec
from tornado.websocket import WebSocketHandler

from server.context import new_request_id, request_id_var
from server.errors import DomainError, error_body
from server.exchange.errors import ExchangeError
from server.security.principal import AUTHORITY, FINANCE, OPERATOR, Principal, region_prefix
from server.services.events import Topic

log = logging.getLogger(__name__)

MAX_FRAME = 4096
MAX_TOPICS = 50
QUEUE_LIMIT = 512  # frames waiting for one client before it is told to resync
RATE = 20.0  # frames per second a client may send, on average
BURST = 40.0
STRIKES = 100  # frames refused for rate before the connection is closed


_CLEANUPS: set[asyncio.Task[None]] = set()  # closed connections' hub cleanups under way


@dataclass
class Watch:
    seq: int = 0  # the last seq queued for the client
    live: bool = False  # False while the snapshot / backlog is being read
    stale: bool = False  # events were dropped: the client must subscribe again
    pending: list[tuple[int, bytes]] = field(default_factory=list)


class EventSocket(WebSocketHandler):
    def initialize(self) -> None:
        self.principal: Principal | None = None
        self.watches: dict[str, Watch] = {}
        self._queue: collections.deque[bytes] = collections.deque()
        self._writer: asyncio.Future[None] | None = None  # only while the socket is full
        self._tokens = BURST
        self._refill_at = time.monotonic()
        self._strikes = 0
        self._lagging = False
        self._active_at = time.monotonic()
        self._idle_timer: object | None = None
        self._closed = False

    # --- services ---------------------------------------------------------------------------
    @property
    def services(self) -> Any:
        return self.application.settings["services"]

    @property
    def hub(self) -> Any:
        return self.services.hub

    def check_origin(self, origin: str) -> bool:
        # authentication is by token, never by cookie: any page (and the mini-program,
        # which sends no browser Origin) may connect
        return True

    def get_compression_options(self) -> dict[str, Any] | None:
        return None  # frames are small JSON; compression would cost a zlib stream per socket

    # --- handshake --------------------------------------------------------------------------
    async def get(self, *args: Any, **kwargs: Any) -> None:
        request_id_var.set(new_request_id())
        token = self.get_query_argument("access_token", None)
        if token is not None:
            try:
                self.principal = await self.services.auth.authenticate(token)
            except DomainError as exc:
                self.set_status(403)
                self.set_header("Content-Type", "application/json; charset=UTF-8")
                self.finish(json.dumps(exc.body()))
                return
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        self.hub.connections.add(self)
        self.application.settings["metrics"].ws_connections.inc()
        self._send_control({"type": "welcome", "authenticated": self.principal is not None,
                            "limits": {"topics": MAX_TOPICS, "frame_bytes": MAX_FRAME,
                                       "frames_per_second": RATE},
                            "ping_seconds": self.application.settings.get(
                                "websocket_ping_interval")})
        self._arm_idle()

    def on_close(self) -> None:
        # nothing may keep a closed connection alive (its idle timer held it for minutes):
        # it is freed by reference counting as soon as the hub lets go (server/collector.py)
        self._closed = True
        self.hub.connections.discard(self)
        self.application.settings["metrics"].ws_connections.dec()
        if self._idle_timer is not None:
            IOLoop.current().remove_timeout(self._idle_timer)
            self._idle_timer = None
        if self._writer is not None:
            self._writer.cancel()
        self._queue.clear()
        topics, self.watches = list(self.watches), {}
        if topics:
            cleanup = asyncio.get_running_loop().create_task(self._unwatch_all(topics))
            _CLEANUPS.add(cleanup)  # held until done, by the module, not the connection
            cleanup.add_done_callback(_CLEANUPS.discard)

    async def _unwatch_all(self, topics: list[str]) -> None:
        for topic in topics:
            await self.hub.unwatch(topic, self)

    def shut(self, code: int, reason: str) -> None:
        if not self._closed:
            self.close(code, reason)

    # --- idle -------------------------------------------------------------------------------
    def _arm_idle(self) -> None:
        idle = self.application.settings["config"].ws_idle_seconds
        self._idle_timer = IOLoop.current().call_later(idle, self._check_idle)

    def _check_idle(self) -> None:
        if self._closed:
            return
        idle = self.application.settings["config"].ws_idle_seconds
        if not self.watches and time.monotonic() - self._active_at >= idle:
            self.shut(4008, "idle: no topic watched")
            return
        self._arm_idle()

    # --- client frames ----------------------------------------------------------------------
    async def on_message(self, message: str | bytes) -> None:
        self._active_at = time.monotonic()
        if not self._take_token():
            return
        if len(message) > MAX_FRAME:
            self._error("WS_FRAME_TOO_LARGE", size=len(message))
            return
        try:
            frame = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
            self._error("WS_BAD_FRAME")
            return
        op = frame["op"]
        if op == "ping":
            self._send_control({"type": "pong", "at": int(time.time() * 1000)})
        elif op == "auth":
            await self._authenticate(frame.get("token"))
        elif op == "subscribe":
            try:
                await self._subscribe(frame)
            except (RedisError, PyMongoError) as exc:  # a store is down: say so, stay open
                log.warning("subscribe failed: %s", type(exc).__name__)
                self.watches.pop(str(frame.get("topic")), None)
                self._error("SERVICE_UNAVAILABLE", topic=frame.get("topic"))
        elif op == "unsubscribe":
            topic = frame.get("topic")
            if isinstance(topic, str) and self.watches.pop(topic, None) is not None:
                await self.hub.unwatch(topic, self)
            self._send_control({"type": "unsubscribed", "topic": topic})
        else:
            self._error("WS_UNKNOWN_OP", op=op[:40])

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._refill_at) * RATE)
        self._refill_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self._strikes += 1
        if self._strikes >= STRIKES:
            self.shut(1008, "rate limit")
        elif self._strikes % 10 == 1:  # tell, without answering every refused frame
            self._error("WS_RATE_LIMITED")
        return False

    async def _authenticate(self, token: Any) -> None:
        try:
            if not isinstance(token, str):
                raise DomainError("TOKEN_INVALID")
            self.principal = await self.services.auth.authenticate(token)
        except DomainError as exc:
            self.shut(4401, exc.code)
            return
        self._send_control({"type": "authenticated", "role": self.principal.role})

    async def _subscribe(self, frame: dict[str, Any]) -> None:
        topic = Topic.parse(frame.get("topic", ""))
        since = frame.get("since")
        if topic is None:
            self._error("WS_TOPIC_INVALID", op="subscribe")
            return
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)
                                  or since < 0):
            self._error("WS_BAD_FRAME", op="subscribe", topic=topic.name,
                        message="since must be a non-negative integer seq")
            return
        if topic.name not in self.watches and len(self.watches) >= MAX_TOPICS:
            self._error("WS_TOO_MANY_TOPICS", topic=topic.name)
            return
        try:
            await self._authorize(topic)
        except DomainError as exc:
            self._error(exc.code, topic=topic.name)
            return
        watch = Watch()
        self.watches[topic.name] = watch  # replaces a previous watch (a resync)
        await self.hub.watch(topic, self)  # from here on nothing raised is missed
        try:
            frames = await self._catch_up(topic, since)
        except (DomainError, ExchangeError) as exc:
            self.watches.pop(topic.name, None)
            await self.hub.unwatch(topic.name, self)
            self._error(getattr(exc, "code", "NOT_FOUND"), topic=topic.name)
            return
        if self.watches.get(topic.name) is not watch:  # unsubscribed meanwhile
            return
        for seq, text in frames:
            self._enqueue(text)
            watch.seq = max(watch.seq, seq)
        for seq, text in watch.pending:
            if seq > watch.seq:
                self._enqueue(text)
                watch.seq = seq
        watch.pending.clear()
        watch.live = True
        self._send_control({"type": "subscribed", "topic": topic.name, "seq": watch.seq})

    async def _authorize(self, topic: Topic) -> None:
        if topic.kind in ("order", "alerts", "warnings") and self.principal is None:
            raise DomainError("AUTH_REQUIRED")
        if topic.kind == "warnings" and not (
                self.principal.role in (OPERATOR, FINANCE) or (
                    self.principal.role == AUTHORITY
                    and topic.ref.startswith(region_prefix(self.principal.region or "")))):
            raise DomainError("FORBIDDEN")  # an authority watches (inside) its own region
        if topic.kind == "order":
            await self.services.orders.get(self.principal, topic.ref)  # ORDER_NOT_FOUND
        if topic.kind == "alerts" and (topic.ref != "ops" or self.principal.role not in (
                OPERATOR, FINANCE)):
            raise DomainError("FORBIDDEN")

    async def _catch_up(self, topic: Topic, since: int | None) -> list[tuple[int, bytes]]:
        """The kept events after ``since``, or a snapshot when there is no since or the
        stream no longer reaches back to it."""
        events = self.services.seats.events
        if since is not None:
            missed = await events.since(topic, since)
            if missed is not None:
                return [(seq, text.encode()) for seq, text in missed]
        if topic.kind == "departure":
            seq, data = await self.services.departures.snapshot(topic.ref)
        elif topic.kind == "alerts":
            seq = await events.last_seq(topic)
            data = {"alerts": await self.services.alerts.list()}
        elif topic.kind == "warnings":
            seq = await events.last_seq(topic)
            data = {"warnings": await self.services.forecasts.upcoming(topic.ref)}
        else:
            seq = await events.last_seq(topic)
            data = await self.services.orders.get(self.principal, topic.ref)
        snapshot = {"type": "snapshot", "topic": topic.name, "seq": seq, "data": data}
        return [(seq, _encode(snapshot))]

    # --- server frames ----------------------------------------------------------------------
    def deliver(self, topic: str, seq: int, frame: bytes) -> None:
        """From the hub: queue one event frame (never waits)."""
        watch = self.watches.get(topic)
        if watch is None or watch.stale:
            return
        if not watch.live:
            watch.pending.append((seq, frame))
            if len(watch.pending) > QUEUE_LIMIT:
                self._fall_behind()
            return
        if seq <= watch.seq:
            return  # already queued (a replay and the live event crossing)
        watch.seq = seq
        self._enqueue(frame)

    def _enqueue(self, frame: bytes) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self._fall_behind()
            return
        self._queue.append(frame)
        self._pump()

    def _fall_behind(self) -> None:
        """The client does not read fast enough: drop what waits for it and tell it to
        resync; if it has not even read that by the next overflow, close it."""
        if self._lagging:
            self.shut(4008, "too slow: events dropped")
            return
        self._lagging = True
        self.resync("slow_consumer")

    def resync(self, reason: str, topics: list[str] | None = None) -> None:
        """Tell the client to subscribe again to ``topics`` (default: all, dropping what
        waits): it fell behind, or the server lost its event feed for a while."""
        if topics is None:
            self._queue.clear()
        chosen = sorted(t for t in self.watches if topics is None or t in topics)
        if not chosen:
            return
        for topic in chosen:
            self.watches[topic].stale = True
            self.watches[topic].pending.clear()
        self.application.settings["metrics"].ws_resyncs.inc()
        self._queue.append(_encode({"type": "resync", "topics": chosen, "reason": reason}))
        self._pump()

    def _send_control(self, payload: dict[str, Any]) -> None:
        self._queue.append(_encode(payload))
        self._pump()

    def _error(self, code: str, **details: Any) -> None:
        self._send_control({"type": "error", **error_body(code, details.pop("message", None),
                                                          **details)["error"]})

    def _pump(self) -> None:
        """Write what waits, straight to the socket while the kernel takes it; once it does
        not, one task waits for the socket to drain and goes on (so an idle connection has
        no task, and an event costs each socket one write of a frame built once)."""
        conn = self.ws_connection
        if self._writer is not None or conn is None or self._closed:
            return
        if conn.is_closing():
            self._queue.clear()
            return
        stream = conn.stream  # type: ignore[attr-defined]
        metrics = self.application.settings["metrics"]
        while self._queue:
            frame = self._queue.popleft()
            if frame.startswith(b'{"type":"resync"'):
                self._lagging = False
            try:
                written = stream.write(_wire(frame))
            except StreamClosedError:
                self._queue.clear()
                return
            (metrics.ws_event_frames if frame.startswith(b'{"type":"event"')
             else metrics.ws_control_frames).inc()
            if stream.writing():  # the kernel's buffer is full: wait until it drains
                self._writer = asyncio.ensure_future(self._drain(written))
                return

    async def _drain(self, written: asyncio.Future[None]) -> None:
        try:
            await written
        except StreamClosedError:
            self._queue.clear()
            return
        finally:
            self._writer = None
        self._pump()


_last_wire: tuple[bytes, bytes] = (b"", b"")


def _wire(frame: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2) around ``frame``: what Tornado's
    ``write_message`` sends without compression. The hub hands one event's bytes to every
    watcher in turn, so the last one built is kept."""
    global _last_wire
    if _last_wire[0] is frame:
        return _last_wire[1]
    n = len(frame)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    _last_wire = (frame, head + frame)
    return _last_wire[1]


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode()


default_handlers = [URLSpec(r"/ws", EventSocket)]

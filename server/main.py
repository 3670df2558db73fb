"""Serving Keyun: HTTP on bound sockets in this process or in forked workers, drained on
SIGINT/SIGTERM. What the ``keyun`` command (``devstack.cli``) runs once the stores are there.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from typing import Any

from tornado.httpserver import HTTPServer

from server import collector
from server.config import Settings
from server.stalls import StallWatch

log = logging.getLogger("keyun")

MAX_BODY = 4 * 1024 * 1024
SHUTDOWN_GRACE = 10.0
STEP_GRACE = 5.0  # each later step of stopping


def serve_here(settings: Settings, sockets: list[Any]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    asyncio.run(serve(settings, sockets))


def fork_worker(settings: Settings, sockets: list[Any], index: int) -> int:
    """Fork worker ``index``; returns its pid (in the worker it serves, then exits)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.environ["KEYUN_WORKER"] = str(index)
            serve_here(settings, sockets)
        except BaseException:
            log.exception("worker %s failed", index)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def fork_workers(settings: Settings, sockets: list[Any]) -> dict[int, int]:
    """Fork every worker: pid → worker index."""
    return {fork_worker(settings, sockets, index): index for index in range(settings.processes)}


class Restarts:
    """When a dead worker may be started again: at once the first time, then after a
    doubling back-off; more than ``limit`` deaths within ``window`` seconds means something
    is wrong with every worker (a bad deploy, stores gone), and the node stops instead."""

    def __init__(self, limit: int = 5, window: float = 60.0, cap: float = 10.0) -> None:
        self.limit, self.window, self.cap = limit, window, cap
        self._deaths: list[float] = []

    def delay(self, now: float) -> float | None:
        """Seconds to wait before the restart, or None: give up."""
        self._deaths = [t for t in self._deaths if now - t < self.window] + [now]
        if len(self._deaths) > self.limit:
            return None
        return min(self.cap, 0.25 * (2 ** (len(self._deaths) - 1)) - 0.25)


def stop_workers(workers: dict[int, int]) -> None:
    """SIGTERM every worker (pid → index), wait for them, SIGKILL the late ones."""
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + SHUTDOWN_GRACE + 5
    for pid in workers:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


async def wait_for_stores(settings: Settings) -> tuple[Any, Any]:
    from server.app import connect_mongo, connect_redis

    assert settings.mongo_uri and settings.redis_url
    mongo = connect_mongo(settings, settings.mongo_uri)
    redis = connect_redis(settings.redis_url)
    deadline = time.monotonic() + 30
    while True:
        try:
            await mongo.admin.command("ping")
            await redis.ping()
            return mongo, redis
        except Exception as exc:
            if time.monotonic() > deadline:
                await mongo.close()
                await redis.aclose()
                raise RuntimeError(f"stores not reachable: {type(exc).__name__}: {exc}") \
                    from None
            await asyncio.sleep(0.5)


async def _drain(metrics: Any) -> None:
    """Let requests being served finish (their stores are still open) before connections,
    jobs and stores close; idle keep-alive connections are closed after."""
    for _ in range(int(SHUTDOWN_GRACE / 0.05)):
        if metrics.serving <= 0:
            return
        await asyncio.sleep(0.05)
    if metrics.serving > 0:
        log.warning("%s requests still being served after %ss; stopping anyway",
                    metrics.serving, SHUTDOWN_GRACE)


async def serve(settings: Settings, sockets: list[Any]) -> None:
    """Serve HTTP on already-bound sockets until SIGINT/SIGTERM, then drain and close."""
    from server.app import make_app

    mongo, redis = await wait_for_stores(settings)
    app = make_app(settings, mongo, redis)
    jobs = app.settings["services"].jobs
    if settings.jobs:
        jobs.start()
    # what start-up made lives as long as the process: out of the collector's way, so a full
    # collection scans only what came after (~100 ms less of a pause under search load);
    # then what lives a minute (held connections above all) joins it (server/collector.py)
    collector.settle()
    gc.callbacks.append(app.settings["metrics"].on_gc)
    keeping = [asyncio.ensure_future(collector.keep()),
               asyncio.ensure_future(app.settings["metrics"].watch_loop())]
    watch = StallWatch(settings.slow_callback_ms / 1000, app.settings["metrics"].stalled)
    if settings.slow_callback_ms:
        watch.install()
    server = HTTPServer(app, max_body_size=MAX_BODY, idle_connection_timeout=60)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", extra={"fields": {"port": settings.port, "pid": os.getpid()}})
    await stop.wait()
    log.info("stopping: no new connections, draining")
    server.stop()
    services = app.settings["services"]
    await _step("closing WebSockets", services.hub.close())  # 1001 going away
    await _drain(app.settings["metrics"])
    try:
        await asyncio.wait_for(server.close_all_connections(), SHUTDOWN_GRACE)
    except TimeoutError:
        log.warning("connections still open after %ss; closing anyway", SHUTDOWN_GRACE)
    for task in keeping:
        task.cancel()
    await _step("stopping jobs", jobs.stop())
    await _step("stopping exports", services.exports.close())
    await _step("closing the seat writer", services.inventory.close())
    await _step("closing the seat view", services.seats.view.close())
    await _step("closing MongoDB", mongo.close())
    await _step("closing Redis", redis.aclose())
    watch.uninstall()
    log.info("stopped")


async def _step(name: str, work: Any, seconds: float = STEP_GRACE) -> None:
    """One step of stopping, bounded: a step that hangs is named in the log and left, so the
    process still exits in time (the supervisor or the test would kill it otherwise)."""
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        log.warning("stopping: %s took over %ss; going on", name, seconds)

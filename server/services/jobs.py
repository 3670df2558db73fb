"""Background jobs: periodic work that runs in exactly one process at a time (a lease each)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from redis.asyncio import Redis

from server.storage.lease import Lease

log = logging.getLogger(__name__)


class RecordFailures:
    """Jobs that walk many records skip a bad one instead of stopping: ``record`` logs its
    failure and counts it per job (``keyun_job_record_failures_total`` in /metrics)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def record(self, job: str, key: object) -> Iterator[None]:
        """Run one record's work; an exception is logged and counted, never raised."""
        try:
            yield
        except Exception:  # CancelledError is a BaseException: it still stops the job
            self.counts[job] = self.counts.get(job, 0) + 1
            log.exception("job %s skipped record %s", job, key)


@dataclass
class Job:
    name: str
    interval: float
    run: Callable[[], Awaitable[object]]


class JobRunner:
    """Runs each job every ``interval`` seconds while this process holds the job's lease."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._jobs: list[Job] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._leases: list[Lease] = []
        # told each run's job and seconds (the process's metrics)
        self.on_run: Callable[[str, float], None] | None = None

    def add(self, name: str, interval: float, run: Callable[[], Awaitable[object]]) -> None:
        self._jobs.append(Job(name, interval, run))

    def start(self) -> None:
        for job in self._jobs:
            self._tasks.append(asyncio.create_task(self._loop(job), name=f"job:{job.name}"))

    async def _loop(self, job: Job) -> None:
        lease = Lease(self._redis, f"job:{job.name}", int(max(10.0, job.interval * 3) * 1000))
        self._leases.append(lease)
        while True:
            try:
                if await lease.hold():
                    started = time.perf_counter()
                    await job.run()
                    if self.on_run is not None:
                        self.on_run(job.name, time.perf_counter() - started)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job %s failed", job.name)
            await asyncio.sleep(job.interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for lease in self._leases:
            with contextlib.suppress(Exception):
                await lease.release()
        self._tasks.clear()

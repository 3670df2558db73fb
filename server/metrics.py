"""Prometheus metrics of one Keyun process: requests by route and status, latencies.

Each Application gets its own registry (no module-level state), so two apps in one test
process never share counters. Routes are labelled by their template (``/api/v1/orders/{order_no}``),
never by the raw path, to keep label cardinality bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from server.stalls import CAUSES

CONTENT_TYPE = CONTENT_TYPE_LATEST
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The metrics one process exposes at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            "keyun_http_requests_total", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "keyun_http_request_duration_seconds", "HTTP request latency by route and method",
            ["route", "method"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.serving = 0  # requests being served (the drain at shutdown waits for none)
        self.in_flight = Gauge("keyun_http_requests_in_flight", "Requests being served",
                               registry=self.registry)
        self.in_flight.set_function(lambda: self.serving)
        self.ws_connections = Gauge("keyun_ws_connections", "Open WebSocket connections",
                                    registry=self.registry)
        self.ws_frames = Counter("keyun_ws_frames_total", "Frames sent to WebSocket clients",
                                 ["type"], registry=self.registry)
        self.ws_event_frames = self.ws_frames.labels("event")  # labelled once: per frame
        self.ws_control_frames = self.ws_frames.labels("control")  # only an increment
        self.ws_resyncs = Counter("keyun_ws_resyncs_total",
                                  "Slow WebSocket clients told to resync (queue full)",
                                  registry=self.registry)

        self.ws_fanout = Histogram(
            "keyun_ws_fanout_seconds", "From an event's arrival from Redis to its frame "
            "written to (or queued for) every local watcher", registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        self.job_seconds = Histogram(
            "keyun_job_seconds", "Background job runs by job, and how long each took (only "
            "in processes running jobs: KEYUN_JOBS)", ["job"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
        self.loop_lag = Histogram(
            "keyun_loop_lag_seconds", "How late the IOLoop ran a timer due every 50 ms: how "
            "long a ready request can wait behind other work of the process (jobs, "
            "collections, a long handler)", registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        self.gc_pauses = Histogram(
            "keyun_gc_pause_seconds", "Pauses of the cyclic garbage collector by generation "
            "(the whole process waits; a full collection of a large heap shows in p99)",
            ["generation"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5))
        self._gc_started = 0.0
        self.loop_stalls = Counter(
            "keyun_loop_stalls_total", "Event-loop callbacks over KEYUN_SLOW_CALLBACK_MS (only "
            "while that diagnostic is on) by cause: work (on the CPU), blocked (waited: a "
            "blocking call, or another thread holding the GIL), held (runnable but not run: "
            "another process or the host had the CPU)",
            ["cause"], registry=self.registry)
        self.loop_stall_seconds = Counter(
            "keyun_loop_stall_seconds_total", "Time those callbacks took, by cause",
            ["cause"], registry=self.registry)
        self._stall_children = {cause: (self.loop_stalls.labels(cause),
                                        self.loop_stall_seconds.labels(cause))
                                for cause in CAUSES}

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` entry: each collection's pause into ``gc_pauses``."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.labels(str(info.get("generation", ""))).observe(
                time.perf_counter() - self._gc_started)

    def stalled(self, cause: str, seconds: float) -> None:
        """A :class:`server.stalls.StallWatch` report: one callback held the loop."""
        count, total = self._stall_children[cause]
        count.inc()
        total.inc(seconds)

    def job_ran(self, job: str, seconds: float) -> None:
        self.job_seconds.labels(job).observe(seconds)

    async def watch_loop(self, every: float = 0.05) -> None:
        """Measure the IOLoop's lag for the life of the process (cancelled at shutdown)."""
        while True:
            due = time.monotonic() + every
            await asyncio.sleep(every)
            self.loop_lag.observe(max(0.0, time.monotonic() - due))

    def watch_record_failures(self, counts: dict[str, int]) -> None:
        """Expose the records jobs skipped (``RecordFailures.counts``), read at scrape time."""
        self.registry.register(_RecordFailuresCollector(counts))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:  # labelled once per route, method and status, not per request
            label = method if method in KNOWN_METHODS else "other"  # anyone can send any
            children = (self.requests.labels(route, label, str(status)),
                        self.latency.labels(route, label))
            if label != "other":
                self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RecordFailuresCollector:
    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily("keyun_job_record_failures",
                                    "Records a job skipped because handling them failed",
                                    labels=["job"])]

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily("keyun_job_record_failures",
                                     "Records a job skipped because handling them failed",
                                     labels=["job"])
        for job, count in sorted(self._counts.items()):
            family.add_metric([job], count)
        return [family]

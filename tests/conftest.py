"""Fixtures: real SecantusDB and redis-server once per session, a real Keyun per module.

The stores are started by the same launcher ``make run`` uses (``devstack.embedded``), on free
loopback ports. The demo province is loaded once into the session database; every test
module gets its own Keyun server process over real HTTP pointed at it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import embedded
from devstack.cli import prepare_database
from server.config import load_settings
from tests.support import TEST_SECRETS, ApiClient, KeyunProcess, keyun_env

TEST_DB = "keyun_test"


@dataclasses.dataclass
class Stores:
    mongo_uri: str
    redis_url: str
    mongo: embedded.ChildServer
    redis: embedded.ChildServer


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keyun")


@pytest.fixture(scope="session")
def stores(workdir: Path) -> Iterator[Stores]:
    """One SecantusDB and one redis-server for the whole session."""
    mongo = embedded.mongo_server(workdir / "stores", memory=True)
    redis = embedded.redis_server(workdir / "stores", persist=False)
    mongo.start()
    redis.start()
    try:
        yield Stores(embedded.mongo_uri(mongo), embedded.redis_url(redis), mongo, redis)
    finally:
        redis.stop()
        mongo.stop()


@dataclasses.dataclass
class Simulators:
    """The two station-system simulators of the session and the systems config they serve."""

    rest: embedded.ChildServer
    xml: embedded.ChildServer
    systems: dict[str, dict[str, str]]

    def url(self, kind: str) -> str:
        return embedded.simulator_base_url(getattr(self, kind), kind)


SIM_SECRETS = {"rest": "rest-token-for-tests", "xml": "xml-secret-for-tests"}


@pytest.fixture(scope="session")
def simulators(workdir: Path) -> Iterator[Simulators]:
    """A REST and an XML station simulator for the demo stations on those dialects."""
    from devstack.demo import DEMO_VENDORS

    started: dict[str, embedded.ChildServer] = {}
    systems: dict[str, dict[str, str]] = {}
    try:
        for kind in ("rest", "xml"):
            codes = [c for c, v in DEMO_VENDORS.items() if v == kind]
            sim = embedded.station_simulator(kind, codes, SIM_SECRETS[kind], workdir / "sims")
            sim.start()
            started[kind] = sim
            for code in codes:
                systems[code] = {"vendor": kind, "secret": SIM_SECRETS[kind],
                                 "base_url": embedded.simulator_base_url(sim, kind)}
        yield Simulators(started["rest"], started["xml"], systems)
    finally:
        for sim in started.values():
            sim.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[embedded.ChildServer]:
    """A redis-server of this test alone (to stop and restart at will)."""
    server = embedded.redis_server(tmp_path, persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seeded(stores: Stores, simulators: Simulators) -> str:
    """The session database: schema, demo province, and a first sync of the simulated
    stations (as `make run` does); returns its name."""
    settings = load_settings({"KEYUN_MONGO_URI": stores.mongo_uri,
                              "KEYUN_REDIS_URL": stores.redis_url, "KEYUN_MONGO_DB": TEST_DB,
                              **TEST_SECRETS})
    asyncio.run(prepare_database(settings, simulators.systems))
    return TEST_DB


@dataclasses.dataclass
class Providers:
    """The provider sandbox of the session and the settings that point Keyun at it."""

    url: str
    env: dict[str, str]
    platform_private: str  # to forge notifications in tests
    merchant_public: str  # to check what Keyun signed
    alipay_private: str  # Alipay's key, to forge its notifications


@pytest.fixture(scope="session")
def providers(workdir: Path) -> Iterator[Providers]:
    """WeChat login, SMS and WeChat Pay sandbox, with a merchant and a platform key pair."""
    from payments.alipay import new_alipay_keys
    from payments.wechatpay import new_rsa_key

    keys = workdir / "wxpay"
    keys.mkdir()
    merchant, merchant_pub = new_rsa_key()
    platform, platform_pub = new_rsa_key()
    (keys / "merchant.pem").write_text(merchant)
    (keys / "platform.pub.pem").write_text(platform_pub)
    app_key, app_pub = new_alipay_keys()
    ali_key, ali_pub = new_alipay_keys()
    (keys / "alipay_app.key").write_text(app_key)
    (keys / "alipay.pub").write_text(ali_pub)
    server = embedded.provider_sandbox(
        workdir / "providers", appid="wx-keyun-sandbox",
        wechat_secret=TEST_SECRETS["KEYUN_WECHAT_SECRET"],
        sms_key=TEST_SECRETS["KEYUN_SMS_API_KEY"],
        einvoice_key=TEST_SECRETS["KEYUN_EINVOICE_API_KEY"],
        wxpay={"mchid": "1900000001", "merchant_public": merchant_pub,
               "platform_private": platform, "platform_serial": "PUB_KEY_ID_0000000000000001",
               "v3_key": TEST_SECRETS["KEYUN_WECHATPAY_API_V3_KEY"],
               "appid": "wx-keyun-sandbox", "app_appid": "wx-keyun-app-sandbox"},
        alipay={"app_id": "2021000000000001", "seller_id": "2088000000000001",
                "app_public": app_pub, "private": ali_key},
        ministry={"platform": "440000", "secret": TEST_SECRETS["KEYUN_MINISTRY_SECRET"]})
    server.start()
    url = f"http://{server.host}:{server.port}"
    try:
        yield Providers(url, {
            "KEYUN_WECHAT_API_BASE": url, "KEYUN_SMS_API_BASE": url,
            "KEYUN_WECHATPAY_API_BASE": url,
            "KEYUN_WECHATPAY_PRIVATE_KEY_FILE": str(keys / "merchant.pem"),
            "KEYUN_WECHATPAY_PLATFORM_PUBLIC_KEY_FILE": str(keys / "platform.pub.pem"),
            "KEYUN_ALIPAY_GATEWAY": f"{url}/gateway.do",
            "KEYUN_ALIPAY_PRIVATE_KEY_FILE": str(keys / "alipay_app.key"),
            "KEYUN_ALIPAY_PUBLIC_KEY_FILE": str(keys / "alipay.pub"),
            "KEYUN_MINISTRY_API_BASE": url, "KEYUN_EINVOICE_API_BASE": url},
            platform, merchant_pub, ali_key)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keyun(stores: Stores, seeded: str, providers: Providers, workdir: Path,
          request: pytest.FixtureRequest) -> Iterator[KeyunProcess]:
    """A Keyun server process for this test module, on the session stores and sandboxes."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=stores.redis_url,
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false",
                    KEYUN_DATA_DIR=str(workdir / name), **providers.env)
    server = KeyunProcess(env, workdir / "logs" / f"{name}.log", int(env["KEYUN_PORT"]))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def services(stores: Stores, seeded: str, providers: Providers, io_loop: Any,
             request: pytest.FixtureRequest) -> Any:
    """The services of a Keyun process, in this test's loop, on the session stores. With the
    module's Keyun server in the test too, providers notify that server (as they would the
    public URL of the process calling them)."""
    from server.app import build_services, connect_mongo, connect_redis

    public = {"KEYUN_PUBLIC_URL": request.getfixturevalue("keyun").base_url} \
        if "keyun" in request.fixturenames else {}
    settings = load_settings({"KEYUN_MONGO_URI": stores.mongo_uri, "KEYUN_MONGO_DB": seeded,
                              "KEYUN_REDIS_URL": stores.redis_url, **TEST_SECRETS,
                              **providers.env, **public})
    mongo, redis = connect_mongo(settings, stores.mongo_uri), connect_redis(stores.redis_url)
    built = build_services(settings, mongo, redis)
    yield built

    async def close() -> None:
        await built.inventory.close()
        await built.seats.view.close()
        await mongo.close()
        await redis.aclose()
    io_loop.run_sync(close)


@pytest.fixture
def api(keyun: KeyunProcess, io_loop: Any) -> ApiClient:
    """An HTTP client for this module's Keyun server (use inside @pytest.mark.gen_test)."""
    return ApiClient(keyun.base_url)


@pytest.fixture
def db(stores: Stores, seeded: str, io_loop: Any) -> Any:
    """The session database through an async client bound to this test's loop."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(stores.mongo_uri, tz_aware=True)
    yield client[seeded]
    io_loop.run_sync(client.close)

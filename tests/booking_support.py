"""Helpers for booking tests: people with valid ID numbers, members, departures, issued
orders."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

from server.clock import local_today
from server.services.realname import check_char
from tests.support import ApiClient

_rng = random.Random()


def new_id() -> str:
    birth = dt.date(1960, 1, 1) + dt.timedelta(days=_rng.randrange(15000))
    first = f"440106{birth:%Y%m%d}{_rng.randrange(1000):03d}"
    return first + check_char(first)


async def app_member(api: ApiClient) -> str:
    """A passenger signed in to the app with phone and SMS code (a fresh number)."""
    number = "137" + str(_rng.randrange(10**8)).zfill(8)
    await api.post("/api/v1/auth/sms/send", {"phone": number})
    code = (await api.get(f"/sandbox/sms/last?phone={number}")).body["code"]
    return (await api.post("/api/v1/auth/sms/login", {"phone": number, "code": code})
            ).body["token"]  # type: ignore[no-any-return]


async def app_order(api: ApiClient, db: Any, token: str, offset: int, index: int
                    ) -> dict[str, Any]:
    """An app order of one passenger on a native departure ``offset`` days ahead."""
    dep = await native_departure(db, offset, index)
    resp = await api.post("/api/v1/orders", {"departure_id": dep["_id"], "channel": "app",
                                             "contact_phone": "13812345678",
                                             "passengers": [person()]}, token=token)
    assert resp.status == 201, resp.text
    return resp.body  # type: ignore[no-any-return]


async def member(api: ApiClient) -> str:
    code = (await api.post("/sandbox/wechat/login-code",
                           {"openid": "o-" + uuid.uuid4().hex})).body["code"]
    return (await api.post("/api/v1/auth/wechat", {"code": code})).body["token"]


def person(name: str = "王五", **extra: Any) -> dict[str, Any]:
    return {"name": name, "id_type": "resident_id", "id_no": new_id(), **extra}


async def native_departure(db: Any, offset: int, index: int = 0) -> dict[str, Any]:
    """The ``index``-th on-sale departure of the demo's native stations ``offset`` days
    ahead (the demo's own: tests that build routes through the API leave them alone)."""
    day = (local_today() + dt.timedelta(days=offset)).isoformat()
    native = await db.stations.distinct("_id", {"system.vendor": "native"})
    deps = await db.departures.find({"service_date": day, "station_id": {"$in": native},
                                     "status": "on_sale", "_id": {"$regex": "^S44"}}
                                    ).sort("_id", 1).to_list()
    return deps[index]




async def issued_order(api: ApiClient, services: Any, token: str, departure_id: str,
                       passengers: list[dict[str, Any]]) -> dict[str, Any]:
    """An order created over HTTP and paid (the payments capability's entry point)."""
    resp = await api.post("/api/v1/orders", {"departure_id": departure_id,
                                             "contact_phone": "13812345678",
                                             "passengers": passengers}, token=token)
    assert resp.status == 201, resp.text
    outcome = await services.orders.mark_paid(resp.body["order_no"], "pay-" + uuid.uuid4().hex,
                                              resp.body["amount"])
    assert outcome == "issued", outcome
    got = await api.get(f"/api/v1/orders/{resp.body['order_no']}", token=token)
    return got.body  # type: ignore[no-any-return]

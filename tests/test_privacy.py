"""Personal data lifecycle (PIPL): a member closes their account; trip records are anonymized
when their retention ends; accounts nobody uses are closed. Over real HTTP and the stores."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from server.services.privacy import RETENTION_JOB
from server.vocabulary import ANONYMIZED
from tests.booking_support import issued_order, native_departure, person
from tests.support import ApiClient

PERSONAL = ("id_no_enc", "id_no_index", "contact_phone_enc", "contact_phone_index",
            "phone_enc", "phone_index", "openid")


async def _sign_in(api: ApiClient, phone: str) -> dict[str, Any]:
    await api.post("/api/v1/auth/sms/send", {"phone": phone})
    code = (await api.get(f"/sandbox/sms/last?phone={phone}")).body["code"]
    resp = await api.post("/api/v1/auth/sms/login", {"phone": phone, "code": code})
    assert resp.status == 200, resp.text
    return resp.body  # type: ignore[no-any-return]


async def _wechat(api: ApiClient, openid: str) -> dict[str, Any]:
    code = (await api.post("/sandbox/wechat/login-code", {"openid": openid})).body["code"]
    resp = await api.post("/api/v1/auth/wechat", {"code": code})
    assert resp.status == 200, resp.text
    return resp.body  # type: ignore[no-any-return]


def _phone() -> str:
    return "136" + str(random.randrange(10**8)).zfill(8)


def _keys(doc: Any) -> set[str]:
    """Every key anywhere in a document (nested documents and arrays included)."""
    if isinstance(doc, dict):
        return set(doc) | {k for v in doc.values() for k in _keys(v)}
    if isinstance(doc, list):
        return {k for v in doc for k in _keys(v)}
    return set()


@pytest.mark.gen_test(timeout=60)
async def test_a_member_closes_their_account(api: ApiClient, db) -> None:
    phone, openid = _phone(), f"o-{random.randrange(10**12)}"
    signed = await _wechat(api, openid)
    token, member_id = signed["token"], signed["member"]["id"]
    added = await api.post("/api/v1/me/passengers", person("赵六"), token=token)
    assert added.status == 201, added.text
    dep = await native_departure(db, 3, 2)
    order = await api.post("/api/v1/orders", {"departure_id": dep["_id"], "channel": "app",
                                              "contact_phone": phone,
                                              "passengers": [person()]}, token=token)
    assert order.status == 201, order.text

    # an unpaid order is a trip still open: closing would lose the way to it
    refused = await api.delete("/api/v1/me/profile", token=token)
    assert refused.status == 409, refused.text
    assert refused.body["error"]["code"] == "ACCOUNT_HAS_OPEN_TRIPS"
    assert order.body["order_no"] in refused.body["error"]["orders"]
    assert (await api.get("/api/v1/me/profile", token=token)).status == 200

    cancelled = await api.post(f"/api/v1/orders/{order.body['order_no']}/cancel", {},
                               token=token)
    assert cancelled.status == 200, cancelled.text
    closed = await api.delete("/api/v1/me/profile", token=token)
    assert closed.status == 200, closed.text
    assert closed.body == {"closed": True, "passengers_deleted": 1}

    # every sign-in ended: the access token and the refresh token are refused
    gone = await api.get("/api/v1/me/profile", token=token)
    assert gone.status == 401 and gone.body["error"]["code"] == "TOKEN_REVOKED"
    refreshed = await api.post("/api/v1/auth/refresh",
                               {"refresh_token": signed["refresh_token"]})
    assert refreshed.status in (401, 403), refreshed.text

    # what is stored: a tombstone without identities, no frequent passengers, the trip
    # record kept (the real-name rules), the act audited
    member = await db.members.find_one({"_id": member_id})
    assert member["status"] == "closed" and not _keys(member) & set(PERSONAL)
    assert await db.passengers.count_documents({"member_id": member_id}) == 0
    assert await db.orders.count_documents({"order_no": order.body["order_no"]}) == 1
    entry = await db.audit.find_one({"action": "member.closed", "target": member_id})
    assert entry is not None and entry["details"] == {"passengers_deleted": 1}

    # the same WeChat user signs in to a new, empty account
    again = await _wechat(api, openid)
    assert again["member"]["id"] != member_id
    listed = await api.get("/api/v1/me/passengers", token=again["token"])
    assert listed.body == {"passengers": []}


@pytest.mark.gen_test(timeout=60)
async def test_a_ticket_for_a_bus_not_yet_gone_keeps_the_account_open(
        api: ApiClient, services, db) -> None:
    signed = await _sign_in(api, _phone())
    dep = await native_departure(db, 4, 3)
    order = await issued_order(api, services, signed["token"], dep["_id"], [person()])
    refused = await api.delete("/api/v1/me/profile", token=signed["token"])
    assert refused.status == 409, refused.text
    assert refused.body["error"]["orders"] == [order["order_no"]]


@pytest.mark.gen_test(timeout=90)
async def test_trips_are_anonymized_when_their_retention_ends(api: ApiClient, services,
                                                              db) -> None:
    signed = await _sign_in(api, _phone())
    dep = await native_departure(db, 2, 4)
    order = await issued_order(api, services, signed["token"], dep["_id"],
                               [person("钱七"), person("孙八")])
    before = await db.tickets.find({"order_no": order["order_no"]}).to_list()
    retention = services.retention
    travel = dt.date.fromisoformat(dep["service_date"])
    at = dt.datetime.combine(travel + dt.timedelta(days=retention.days), dt.time(12),
                             tzinfo=dt.UTC)

    # a day short of the retention: nothing of that day is touched
    early = await retention.anonymize_trips(at - dt.timedelta(days=1))
    assert early["through"] == (travel - dt.timedelta(days=1)).isoformat()
    stored = await db.tickets.find({"order_no": order["order_no"]}).to_list()
    assert all("id_no_enc" in t["passenger"] for t in stored)

    done = await retention.anonymize_trips(at)
    assert done["days"] == 1 and done["orders"] >= 1 and done["tickets"] >= 2
    tickets = await db.tickets.find({"order_no": order["order_no"]}).to_list()
    for old, new in zip(sorted(before, key=lambda t: t["ticket_no"]),
                        sorted(tickets, key=lambda t: t["ticket_no"]), strict=True):
        assert new["passenger"] == {"name": ANONYMIZED, "id_type": "resident_id",
                                    "id_no_masked": ANONYMIZED}
        # what settlement and the statistics read is as it was
        for kept in ("ticket_no", "price", "station_fee", "ticket_type", "seat", "status",
                     "issued_at", "distance_km", "departure_id"):
            assert new.get(kept) == old.get(kept), kept
    stored_order = await db.orders.find_one({"order_no": order["order_no"]})
    assert not _keys(stored_order) & set(PERSONAL)
    assert stored_order["amount"] == order["amount"]
    assert stored_order["contact_phone_masked"] == ANONYMIZED

    # the passenger still sees the trip, without who travelled
    shown = await api.get(f"/api/v1/orders/{order['order_no']}", token=signed["token"])
    assert shown.status == 200, shown.text
    assert {t["passenger"]["name"] for t in shown.body["tickets"]} == {ANONYMIZED}
    assert shown.body["contact_phone"] == ANONYMIZED

    # once is enough: a second run finds nothing more to do
    assert (await retention.anonymize_trips(at)) == {**done, "days": 0, "orders": 0,
                                                     "tickets": 0}


@pytest.mark.gen_test(timeout=60)
async def test_an_account_unused_past_retention_is_closed(api: ApiClient, services,
                                                          db) -> None:
    unused, used = await _sign_in(api, _phone()), await _sign_in(api, _phone())
    for signed in (unused, used):
        added = await api.post("/api/v1/me/passengers", person(), token=signed["token"])
        assert added.status == 201, added.text
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=services.retention.days + 5)
    # both last signed in long ago; the second has kept itself signed in by refreshing
    for signed in (unused, used):
        await db.members.update_one({"_id": signed["member"]["id"]},
                                    {"$set": {"last_login_at": long_ago}})
    await db.refresh_tokens.update_many({"subject.id": unused["member"]["id"]},
                                        {"$set": {"created_at": long_ago}})
    assert (await api.post("/api/v1/auth/refresh",
                           {"refresh_token": used["refresh_token"]})).status == 200

    done = await services.retention.run()
    assert done["members_closed"] >= 1
    closed = await db.members.find_one({"_id": unused["member"]["id"]})
    assert closed["status"] == "closed" and not _keys(closed) & set(PERSONAL)
    assert await db.passengers.count_documents({"member_id": unused["member"]["id"]}) == 0
    kept = await db.members.find_one({"_id": used["member"]["id"]})
    assert kept["status"] == "active" and kept["last_login_at"] > long_ago
    assert await db.passengers.count_documents({"member_id": used["member"]["id"]}) == 1
    assert await db.audit.find_one({"action": "member.closed_dormant",
                                    "target": unused["member"]["id"],
                                    "actor": RETENTION_JOB}) is not None
    # its sign-ins ended (access tokens elsewhere within REVOCATION_CACHE_SECONDS, as staff's)
    refreshed = await api.post("/api/v1/auth/refresh",
                               {"refresh_token": unused["refresh_token"]})
    assert refreshed.status == 401, refreshed.text

"""Agent outlets over real HTTP: the operator registers and changes outlets; an outlet sells
only while active, only its routes, within its daily quota; an agent reads its own account."""

from __future__ import annotations

import uuid

import pytest

from tests.booking_support import native_departure, person
from tests.support import ApiClient


@pytest.mark.gen_test(timeout=90)
async def test_outlet_registry_rules_and_the_agents_account(api: ApiClient, db) -> None:
    operator = (await api.login("operator"))["token"]
    agent = (await api.login("agent"))["token"]  # of OUT440106001
    outlet = "OUT440106001"
    code = "OUT" + uuid.uuid4().hex[:8].upper()
    made = await api.post("/api/v1/admin/outlets", {
        "code": code, "name": "体育西代售点", "division": "440106", "credit_limit": 100_000,
        "commission_bp": 250}, token=operator)
    assert made.status == 201 and made.body["status"] == "active", made.text
    assert (await api.post("/api/v1/admin/outlets", {"code": code, "name": "x",
                                                     "division": "440106"}, token=operator)
            ).error_code == "OUTLET_EXISTS"
    unknown = await api.post("/api/v1/admin/outlets", {
        "code": code + "X", "name": "x", "division": "440106", "routes": ["NOPE"]},
        token=operator)
    assert unknown.status == 422 and unknown.error_code == "ROUTE_NOT_FOUND"
    listed = await api.get("/api/v1/admin/outlets?division=440100", token=operator)
    assert code in [o["code"] for o in listed.body["outlets"]]

    dep = await native_departure(db, 8, 5)
    other = await db.departures.find_one({"route_id": {"$ne": dep["route_id"]},
                                          "service_date": dep["service_date"],
                                          "inventory": "native", "status": "on_sale"})

    def book(departure_id: str, count: int = 1):
        return api.post("/api/v1/orders", {"departure_id": departure_id,
                                           "contact_phone": "13812345678",
                                           "passengers": [person() for _ in range(count)]},
                        token=agent)

    before = (await api.get("/api/v1/agent/account", token=agent)).body
    try:
        # only its routes
        limited = await api.patch(f"/api/v1/admin/outlets/{outlet}",
                                  {"routes": [dep["route_id"]]}, token=operator)
        assert limited.status == 200 and limited.body["routes"] == [dep["route_id"]]
        refused = await book(other["_id"])
        assert refused.status == 422 and refused.error_code == "ROUTE_NOT_SELLABLE"
        assert (await book(dep["_id"])).status == 201
        # a daily quota: what is left today, then refused
        sold = (await api.get("/api/v1/agent/account", token=agent)).body["sold_today"]
        await api.patch(f"/api/v1/admin/outlets/{outlet}", {"daily_quota": sold + 2},
                        token=operator)
        assert (await book(dep["_id"], 2)).status == 201
        over = await book(dep["_id"])
        assert over.status == 409 and over.error_code == "OUTLET_QUOTA_EXCEEDED"
        account = (await api.get("/api/v1/agent/account", token=agent)).body
        assert account["sold_today"] == sold + 2 and account["quota_left"] == 0
        assert account["credit_left"] == account["balance"] + account["credit_limit"]
        # a quota per departure, and only some stations' departures
        await api.patch(f"/api/v1/admin/outlets/{outlet}", {
            "daily_quota": None, "routes": [], "departure_quota": 2,
            "stations": [dep["station_id"]]}, token=operator)
        fresh = await db.departures.find_one({
            "station_id": dep["station_id"], "service_date": dep["service_date"],
            "status": "on_sale", "_id": {"$ne": dep["_id"]}, "inventory": "native"})
        assert (await book(fresh["_id"], 2)).status == 201
        full = await book(fresh["_id"])
        assert full.status == 409 and full.error_code == "OUTLET_QUOTA_EXCEEDED"
        assert full.body["error"]["left"] == 0
        elsewhere = await db.departures.find_one({
            "station_id": {"$ne": dep["station_id"]}, "service_date": dep["service_date"],
            "status": "on_sale", "inventory": "native"})
        refused = await book(elsewhere["_id"])
        assert refused.status == 422 and refused.error_code == "ROUTE_NOT_SELLABLE"
        bad = await api.patch(f"/api/v1/admin/outlets/{outlet}", {"stations": ["NOPE"]},
                              token=operator)
        assert bad.status == 422 and bad.error_code == "REFERENCE_NOT_FOUND"
        # suspended: no sale at all
        await api.patch(f"/api/v1/admin/outlets/{outlet}",
                        {"status": "suspended", "daily_quota": None}, token=operator)
        stopped = await book(dep["_id"])
        assert stopped.status == 403 and stopped.error_code == "OUTLET_SUSPENDED"
    finally:
        await api.patch(f"/api/v1/admin/outlets/{outlet}", {
            "status": "active", "routes": [], "stations": [], "daily_quota": None,
            "departure_quota": None}, token=operator)
    assert (await api.get("/api/v1/agent/account", token=operator)).status == 403
    trail = {e["action"] for e in (await api.get(
        "/api/v1/admin/audit?limit=50&actor=stf_demo_operator", token=operator)).body["entries"]}
    assert {"outlet.create", "outlet.update"} <= trail
    assert before["commission_bp"] == 300


@pytest.mark.gen_test(timeout=90)
async def test_an_agent_reads_its_deposit_statement(api: ApiClient, db, services) -> None:
    """Finance records a top-up, the agent pays an order from the deposit and refunds
    nothing: the statement shows both as the ledger booked them, the latest first, paged."""
    finance = (await api.login("finance"))["token"]
    agent = (await api.login("agent"))["token"]  # of OUT440106001
    topped = await api.post("/api/v1/admin/outlets/OUT440106001/deposits",
                            {"amount": 50_000, "reference": f"BANK-{uuid.uuid4().hex[:10]}"},
                            token=finance)
    assert topped.status == 200 and topped.body["recorded"], topped.text
    dep = await native_departure(db, 6, 5)
    order = await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                              "contact_phone": "13812345678",
                                              "passengers": [person()]}, token=agent)
    assert order.status == 201, order.text
    paid = await api.post(f"/api/v1/orders/{order.body['order_no']}/pay",
                          {"method": "agent_balance"}, token=agent)
    assert paid.status == 200, paid.text
    await services.ledger.run()
    statement = await api.get("/api/v1/agent/account/entries?limit=100", token=agent)
    assert statement.status == 200, statement.text
    lines = statement.body["entries"]
    assert statement.body["total"] >= 2
    payment = next(e for e in lines if e.get("order_no") == order.body["order_no"])
    assert payment["kind"] == "payment" and payment["amount"] == -order.body["amount"]
    assert any(e["kind"] == "deposit" and e["amount"] == 50_000 for e in lines)
    days = [e["booked_on"] for e in lines]
    assert days == sorted(days, reverse=True)  # the latest first
    second = await api.get("/api/v1/agent/account/entries?limit=1&offset=1", token=agent)
    assert second.body["entries"] == lines[1:2]
    assert second.body["total"] == statement.body["total"]
    assert (await api.get("/api/v1/agent/account/entries", token=finance)).status == 403

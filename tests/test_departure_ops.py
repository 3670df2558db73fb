"""Departure operations over real HTTP (issue 13, item 3): stop and resume sale, cancel and
delay with every ticket holder told, assign a vehicle and drivers, add an extra bus — for
native stations only, scoped, audited; bad input refused with its code."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from server.clock import LOCAL_TZ, local_today
from tests.booking_support import app_member, issued_order, native_departure, person
from tests.support import ApiClient


async def _book(api: ApiClient, dep_id: str) -> int:
    token = await app_member(api)
    resp = await api.post("/api/v1/orders", {"departure_id": dep_id, "channel": "app",
                                             "contact_phone": "13812345678",
                                             "passengers": [person()]}, token=token)
    return resp.status


@pytest.mark.gen_test(timeout=90)
async def test_stop_resume_cancel_and_delay_reach_sale_and_passengers(api: ApiClient, db,
                                                                      services) -> None:
    operator = (await api.login("operator"))["token"]
    dep = await native_departure(db, 7, 1)
    path = f"/api/v1/admin/departures/{dep['_id']}"
    stopped = await api.post(f"{path}/stop-sale", {"reason": "车辆检修"}, token=operator)
    assert stopped.status == 200 and stopped.body["status"] == "stopped", stopped.text
    detail = await api.get(f"/api/v1/departures/{dep['_id']}")
    assert detail.body["on_sale_online"] is False
    token = await app_member(api)
    refused = await api.post("/api/v1/orders", {"departure_id": dep["_id"], "channel": "app",
                                                "contact_phone": "13812345678",
                                                "passengers": [person()]}, token=token)
    assert refused.status == 409 and refused.error_code == "DEPARTURE_STOPPED"
    again = await api.post(f"{path}/stop-sale", {"reason": "再停"}, token=operator)
    assert again.status == 409 and again.error_code == "DEPARTURE_NOT_CHANGEABLE"
    assert (await api.post(f"{path}/resume-sale", token=operator)).body["status"] == "on_sale"
    order = await issued_order(api, services, token, dep["_id"], [person()])

    # delayed: not to an earlier time; to a later one, and the passenger is told
    earlier = (dep["departs_at"] - dt.timedelta(hours=1)).astimezone(LOCAL_TZ).isoformat()
    bad = await api.post(f"{path}/delay", {"departs_at": earlier, "reason": "x"},
                         token=operator)
    assert bad.status == 422 and bad.error_code == "DEPARTURE_TIME_INVALID"
    later = (dep["departs_at"] + dt.timedelta(minutes=40)).astimezone(LOCAL_TZ)
    delayed = await api.post(f"{path}/delay", {"departs_at": later.isoformat(),
                                               "reason": "道路管制"}, token=operator)
    assert delayed.status == 200, delayed.text
    assert dt.datetime.fromisoformat(delayed.body["departs_at"]) == later
    told = await db.notices.find_one({"order_no": order["order_no"],
                                      "kind": "departure_changed"})
    assert told is not None and told["params"]["change"] == "departure_time"

    # cancelled: off sale, told again, and the refund costs nothing
    cancelled = await api.post(f"{path}/cancel", {"reason": "暴雨停运"}, token=operator)
    assert cancelled.status == 200 and cancelled.body["status"] == "cancelled"
    kinds = {n["params"]["change"] async for n in db.notices.find(
        {"order_no": order["order_no"], "kind": "departure_changed"})}
    assert kinds == {"departure_time", "cancelled"}
    quote = await api.get(f"/api/v1/tickets/{order['tickets'][0]['ticket_no']}/refund-quote",
                          token=token)
    assert quote.body["fee"] == 0 and quote.body["refund_amount"] == order["amount"]
    assert (await api.post(f"{path}/cancel", {"reason": "x"}, token=operator)).error_code \
        == "DEPARTURE_NOT_CHANGEABLE"
    trail = {e["action"] for e in (await api.get(
        "/api/v1/admin/audit?limit=100", token=operator)).body["entries"]
        if e.get("target") == dep["_id"]}
    assert {"departure.stop_sale", "departure.resume_sale", "departure.delay",
            "departure.cancel"} <= trail


@pytest.mark.gen_test(timeout=90)
async def test_assign_extra_buses_and_scope(api: ApiClient, db) -> None:
    operator = (await api.login("operator"))["token"]
    dep = await native_departure(db, 7, 2)
    path = f"/api/v1/admin/departures/{dep['_id']}"
    big = await db.vehicles.find_one({"status": "active", "seats": {"$gte": dep["seats"]}})
    small = {**big, "_id": "粤A" + uuid.uuid4().hex[:5].upper(), "seats": dep["seats"] - 1}
    small["plate"] = small["_id"]
    await db.vehicles.insert_one(small)
    driver = await db.drivers.find_one({"status": "active"})
    too_small = await api.post(f"{path}/assign", {"vehicle_id": small["_id"]}, token=operator)
    assert too_small.status == 409 and too_small.error_code == "VEHICLE_TOO_SMALL"
    unknown = await api.post(f"{path}/assign", {"vehicle_id": "粤Z00000"}, token=operator)
    assert unknown.status == 422 and unknown.error_code == "VEHICLE_NOT_FOUND"
    assigned = await api.post(f"{path}/assign", {"vehicle_id": big["_id"],
                                                 "driver_ids": [driver["_id"]]},
                              token=operator)
    assert assigned.status == 200 and assigned.body["vehicle_id"] == big["_id"]
    assert assigned.body["driver_ids"] == [driver["_id"]]

    # an extra bus of the same schedule, bookable at once
    day = (local_today() + dt.timedelta(days=7)).isoformat()
    body = {"schedule_id": dep["schedule_id"], "service_date": day, "nature": "extra"}
    first = await api.post("/api/v1/admin/departures", body, token=operator)
    assert first.status == 201, first.text
    second = await api.post("/api/v1/admin/departures", body, token=operator)
    assert first.body["id"].endswith("-X1") and second.body["id"].endswith("-X2")
    assert first.body["nature"] == "extra"
    assert await _book(api, first.body["id"]) == 201
    outside = await api.post("/api/v1/admin/departures", {
        **body, "service_date": (local_today() + dt.timedelta(days=60)).isoformat()},
        token=operator)
    assert outside.status == 422 and outside.error_code == "DATE_NOT_ON_SALE"

    # station staff act on their own station's departures only; proxied ones elsewhere
    window = (await api.login("station_staff"))["token"]  # at 440111001
    there = await db.departures.find_one({"station_id": {"$ne": "440111001"},
                                          "inventory": "native", "status": "on_sale"})
    assert (await api.post(f"/api/v1/admin/departures/{there['_id']}/stop-sale",
                           {"reason": "x"}, token=window)).status == 404
    proxied = await db.departures.find_one({"inventory": "proxied", "status": "on_sale"})
    assert (await api.post(f"/api/v1/admin/departures/{proxied['_id']}/stop-sale",
                           {"reason": "x"}, token=operator)).error_code == "DEPARTURE_PROXIED"
    gate = (await api.login("gate"))["token"]
    assert (await api.post(f"{path}/stop-sale", {"reason": "x"}, token=gate)).status == 403


@pytest.mark.gen_test(timeout=90)
async def test_back_office_lists_page_and_filter_on_the_server(api: ApiClient, db) -> None:
    """A day's departures, staff, outlets, refunds and alerts come a page at a time with the
    total over all pages; pages do not overlap, filters narrow the total, bad paging is a 400."""
    operator = (await api.login("operator"))["token"]
    day = (local_today() + dt.timedelta(days=2)).isoformat()
    all_of_day = await db.departures.count_documents({"service_date": day})
    assert all_of_day > 10
    path = f"/api/v1/admin/departures?date={day}"
    first = await api.get(f"{path}&limit=5", token=operator)
    second = await api.get(f"{path}&limit=5&offset=5", token=operator)
    assert first.status == 200 and first.body["total"] == all_of_day, first.text
    assert len(first.body["departures"]) == 5 and len(second.body["departures"]) == 5
    ids = [d["id"] for d in first.body["departures"] + second.body["departures"]]
    assert len(set(ids)) == 10  # no row on two pages
    times = [d["departs_at"] for d in first.body["departures"] + second.body["departures"]]
    assert times == sorted(times)  # one order over the pages
    one = first.body["departures"][0]
    code = one["id"].rsplit("-", 1)[0]
    found = await api.get(f"{path}&q={code.lower()}", token=operator)  # any case
    assert [d["id"] for d in found.body["departures"]] == [one["id"]], found.text
    assert found.body["total"] == 1
    stopped = await api.get(f"{path}&status=stopped", token=operator)
    assert all(d["status"] == "stopped" for d in stopped.body["departures"])
    assert stopped.body["total"] == await db.departures.count_documents(
        {"service_date": day, "status": "stopped"})

    staff = await api.get("/api/v1/admin/staff?limit=2", token=operator)
    assert len(staff.body["staff"]) == 2
    assert staff.body["total"] == await db.staff.count_documents({})
    named = await api.get("/api/v1/admin/staff?q=operat", token=operator)
    assert named.body["total"] >= 1
    assert all("operat" in s["username"] for s in named.body["staff"])
    outlets = await api.get("/api/v1/admin/outlets?limit=1", token=operator)
    assert len(outlets.body["outlets"]) <= 1
    assert outlets.body["total"] == await db.outlets.count_documents({})
    for listed in ("refunds", "alerts"):
        got = await api.get(f"/api/v1/admin/{listed}?limit=1&offset=0", token=operator)
        assert got.status == 200 and got.body["total"] >= len(got.body[listed]), got.text
    bad = await api.get(f"{path}&limit=0", token=operator)
    assert bad.status == 400 and bad.error_code in ("INVALID_QUERY", "INVALID_VALUE"), bad.text
    far = await api.get(f"{path}&offset=100001", token=operator)
    assert far.status == 400

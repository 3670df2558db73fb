"""Base data over real HTTP (issue 13, item 1): an operator builds a station, a carrier with
its fleet and drivers, a route with three stops, a schedule and fares; departures are
planned and search shows them within seconds; a fare change reaches search; every bad write
is a 4xx with its code and writes nothing; versions, scope and the audit hold."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest

from server.clock import local_today
from tests.booking_support import app_member, new_id, person
from tests.support import ApiClient

ADMIN = "/api/v1/admin"


def _code(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8].upper()


async def _search_until(api: ApiClient, query: str, predicate: Any,
                        seconds: float = 8.0) -> list[dict[str, Any]]:
    """Search until ``predicate`` holds of the results (it must, within seconds)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        found = (await api.get(f"/api/v1/departures?{query}")).body["departures"]
        if predicate(found) or asyncio.get_running_loop().time() > deadline:
            return found  # type: ignore[no-any-return]
        await asyncio.sleep(0.25)


async def _network(api: ApiClient, token: str) -> dict[str, Any]:
    """A new native station, a carrier with a coach and a driver, a route of three stops
    from the new station, a schedule at 10:30 and its fares."""
    station = _code("T")
    made: dict[str, Any] = {"station": station}
    resp = await api.post(f"{ADMIN}/stations", {
        "code": station, "name": f"测试{station[-4:]}客运站", "grade": 2,
        "division": "440106", "city": "广州", "address": "广州市天河区测试路1号",
        "complaint_phone": "020-12345678", "lng": 113.36, "lat": 23.12}, token=token)
    assert resp.status == 201, resp.text
    assert resp.body["vendor"] == "native" and resp.body["version"] == 1
    carrier = _code("C")
    resp = await api.post(f"{ADMIN}/carriers", {
        "code": carrier, "name": "测试客运有限公司", "division": "440106",
        "address": "广州市天河区", "phone": "020-87654321", "licence_word": "粤交运管许可穗字",
        "licence_no": "440100123456", "quality_rating": "AA", "safety_rating": "一级"},
        token=token)
    assert resp.status == 201, resp.text
    made["carrier"] = carrier
    plate = "粤A" + uuid.uuid4().hex[:5].upper().replace("O", "0").replace("I", "1")
    resp = await api.post(f"{ADMIN}/vehicles", {
        "plate": plate, "carrier_id": carrier, "model": "宇通ZK6122H", "vehicle_type": "大型客车",
        "grade": "high_1", "manufactured_on": "2022-05-01", "seats": 49,
        "positioning_device": "GPS-0001"}, token=token)
    assert resp.status == 201, resp.text
    made["vehicle"] = plate
    licence = _code("DR")
    made["driver_id_no"] = new_id()
    resp = await api.post(f"{ADMIN}/drivers", {
        "licence_no": licence, "name": "李师傅", "id_no": made["driver_id_no"],
        "phone": "13912345678", "carrier_id": carrier, "licence_class": "A1",
        "bad_records": [{"date": "2025-03-01", "description": "超速 10%"}],
        "credit_rating": "AAA"}, token=token)
    assert resp.status == 201, resp.text
    made["driver"] = licence
    made["driver_view"] = resp.body
    route = _code("R")
    resp = await api.post(f"{ADMIN}/routes", {
        "code": route, "name": "测试—佛山—江门", "grade": "class_2", "type": "intercity",
        "origin_station_id": station, "destination_station_id": "440703001",
        "highway_km": 80, "carrier_ids": [carrier],
        "stops": [
            {"code": "P0", "name": f"测试{station[-4:]}客运站", "station_id": station,
             "city": "广州", "division": "440106", "distance_km": 0},
            {"code": "P1", "name": "佛山汽车站", "station_id": "440604001", "city": "佛山",
             "division": "440604", "address": "佛山市禅城区", "distance_km": 35},
            {"code": "P2", "name": "江门汽车总站", "station_id": "440703001", "city": "江门",
             "division": "440703", "distance_km": 95}]}, token=token)
    assert resp.status == 201, resp.text
    assert resp.body["distance_km"] == 95 and len(resp.body["stops"]) == 3
    made["route"] = route
    schedule = _code("S")
    resp = await api.post(f"{ADMIN}/schedules", {
        "code": schedule, "route_id": route, "carrier_id": carrier, "departs_at_local": "10:30",
        "seats": 45, "vehicle_grade": "high_1"}, token=token)
    assert resp.status == 201, resp.text
    assert resp.body["station_id"] == station
    made["schedule"] = schedule
    for frm, to, adult in ((0, 1, 1500), (0, 2, 3500), (1, 2, 2200)):
        resp = await api.post(f"{ADMIN}/fares", {
            "route_id": route, "from_seq": frm, "to_seq": to, "guide_price": adult + 300,
            "prices": {"adult": adult, "child": adult // 2}, "station_fee": 100},
            token=token)
        assert resp.status == 201, resp.text
    return made


@pytest.mark.gen_test(timeout=120)
async def test_an_operator_builds_a_route_that_passengers_can_book(api: ApiClient, db) -> None:
    operator = (await api.login("operator"))["token"]
    made = await _network(api, operator)
    tomorrow = (local_today() + dt.timedelta(days=1)).isoformat()

    # departures are planned at once, and search finds them within seconds
    query = f"from={made['station']}&to=江门&date={tomorrow}"
    found = await _search_until(api, query, lambda r: bool(r))
    assert [d["route_id"] for d in found] == [made["route"]], found
    assert found[0]["fares"]["adult"] == 3500 and found[0]["distance_km"] == 95
    assert found[0]["departs_at"].endswith("10:30:00+08:00")
    # an intermediate stop is searchable too
    middle = await _search_until(api, f"from={made['station']}&to=佛山&date={tomorrow}",
                                 lambda r: bool(r))
    assert middle and middle[0]["fares"]["adult"] == 1500

    # a passenger books it
    token = await app_member(api)
    booked = await api.post("/api/v1/orders", {"departure_id": found[0]["id"],
                                               "contact_phone": "13812345678",
                                               "passengers": [person()],
                                               "children": [{"name": "小明"}]}, token=token)
    assert booked.status == 201 and booked.body["amount"] == 3500, booked.text
    # the ticket as table 4-1 lists it: mileage, station fee, an accompanied child
    ticket = booked.body["tickets"][0]
    assert (ticket["distance_km"], ticket["station_fee"], ticket["with_child"]) == (95, 100, 1)

    # a fare change (with the version it was made on) reaches search within seconds
    fare_id = f"{made['route']}-0-2"
    fare = await api.get(f"{ADMIN}/fares/{fare_id}", token=operator)
    assert fare.status == 200 and fare.headers["Etag"] == '"1"'
    changed = await api.patch(f"{ADMIN}/fares/{fare_id}", {
        "prices": {"adult": 3300, "child": 1650}}, token=operator,
        headers={"If-Match": '"1"'})
    assert changed.status == 200 and changed.body["version"] == 2, changed.text
    found = await _search_until(api, query, lambda r: r and r[0]["fares"]["adult"] == 3300)
    assert found[0]["fares"]["adult"] == 3300

    # the same stale version again: refused, and nothing changes
    stale = await api.patch(f"{ADMIN}/fares/{fare_id}", {"prices": {"adult": 3000}},
                            token=operator, headers={"If-Match": '"1"'})
    assert stale.status == 412 and stale.error_code == "VERSION_MISMATCH"
    assert stale.body["error"]["version"] == 2
    missing = await api.patch(f"{ADMIN}/fares/{fare_id}", {"prices": {"adult": 3000}},
                              token=operator)
    assert missing.status == 428 and missing.error_code == "IF_MATCH_REQUIRED"
    assert (await db.fares.find_one({"_id": fare_id}))["prices"]["adult"] == 3300

    # a timetable change moves the departures nobody has a ticket on, not the booked one
    schedule = await api.get(f"{ADMIN}/schedules/{made['schedule']}", token=operator)
    moved = await api.patch(f"{ADMIN}/schedules/{made['schedule']}",
                            {"departs_at_local": "11:00"}, token=operator,
                            headers={"If-Match": schedule.headers["Etag"]})
    assert moved.status == 200, moved.text
    after = (local_today() + dt.timedelta(days=2)).isoformat()
    later = await _search_until(api, f"from={made['station']}&to=江门&date={after}",
                                lambda r: r and r[0]["departs_at"].endswith("11:00:00+08:00"))
    assert later[0]["departs_at"].endswith("11:00:00+08:00")
    booked_dep = await db.departures.find_one({"_id": found[0]["id"]})
    assert booked_dep["departs_at"].astimezone(dt.timezone(dt.timedelta(hours=8))
                                               ).strftime("%H:%M") == "10:30"

    # the driver's ID number and phone: encrypted at rest, masked in every answer
    stored = await db.drivers.find_one({"_id": made["driver"]})
    assert made["driver_id_no"] not in str(stored) and "13912345678" not in str(stored)
    view = made["driver_view"]
    assert view["id_no"] == made["driver_id_no"][:4] + "*" * 10 + made["driver_id_no"][-4:]
    assert view["phone"] == "139****5678" and view["bad_records"][0]["description"]

    # every change is in the audit, by whom
    actions = {e["action"] async for e in db.audit.find({"target": {"$in": [
        made["route"], fare_id, made["schedule"], made["driver"]]}})}
    assert {"routes.create", "fares.create", "fares.update", "schedules.update",
            "drivers.create"} <= actions
    entry = await db.audit.find_one({"action": "drivers.create", "target": made["driver"]})
    assert made["driver_id_no"] not in str(entry)


@pytest.mark.gen_test(timeout=120)
async def test_bad_writes_are_refused_with_their_code_and_write_nothing(api: ApiClient,
                                                                        db) -> None:
    operator = (await api.login("operator"))["token"]
    made = await _network(api, operator)
    before = {k: await db[k].count_documents({}) for k in (
        "stations", "routes", "stops", "schedules", "fares", "vehicles", "audit")}

    async def refused(path: str, body: dict[str, Any], status: int, code: str) -> None:
        resp = await api.post(f"{ADMIN}/{path}", body, token=operator)
        assert (resp.status, resp.error_code) == (status, code), (path, resp.text)

    await refused("fares", {"route_id": made["route"], "from_seq": 1, "to_seq": 2,
                            "guide_price": 2000, "prices": {"adult": 2100}},
                  422, "FARE_ABOVE_GUIDE")
    await refused("fares", {"route_id": made["route"], "from_seq": 2, "to_seq": 5,
                            "guide_price": 2000, "prices": {"adult": 1000}},
                  422, "INVALID_SEGMENT")
    await refused("routes", {"code": _code("R"), "name": "x", "origin_station_id": "NOPE01",
                             "grade": "class_2", "type": "intercity",
                             "destination_station_id": "440703001",
                             "carrier_ids": [made["carrier"]],
                             "stops": [{"name": "a", "city": "a", "division": "440106",
                                        "distance_km": 0},
                                       {"name": "b", "city": "b", "division": "440703",
                                        "distance_km": 9}]},
                  422, "REFERENCE_NOT_FOUND")
    await refused("routes", {"code": _code("R"), "name": "倒序", "carrier_ids": [made["carrier"]],
                             "grade": "class_2", "type": "intercity",
                             "origin_station_id": made["station"],
                             "destination_station_id": "440703001",
                             "stops": [{"name": "a", "city": "a", "division": "440106",
                                        "station_id": made["station"], "distance_km": 0},
                                       {"name": "b", "city": "b", "division": "440703",
                                        "station_id": "440703001", "distance_km": 0}]},
                  422, "STOPS_INVALID")
    await refused("vehicles", {"plate": "粤A00001", "carrier_id": "NOPE", "model": "x",
                               "grade": "mid", "seats": 30}, 422, "REFERENCE_NOT_FOUND")
    await refused("drivers", {"licence_no": _code("DR"), "name": "x", "id_no": "440106199001011230",
                              "carrier_id": made["carrier"], "licence_class": "A1"},
                  422, "INVALID_ID_NUMBER")
    await refused("schedules", {"code": _code("S"), "route_id": made["route"],
                                "carrier_id": "C44010001", "departs_at_local": "09:00",
                                "seats": 40}, 422, "CARRIER_NOT_ON_ROUTE")
    await refused("schedules", {"code": _code("S"), "route_id": made["route"],
                                "carrier_id": made["carrier"], "departs_at_local": "25:00",
                                "seats": 40}, 400, "INVALID_VALUE")
    await refused("stations", {"code": made["station"], "name": "重复", "grade": 1,
                               "division": "440106", "city": "广州", "lng": 113.3,
                               "lat": 23.1}, 409, "RECORD_EXISTS")
    await refused("carriers", {"code": _code("C"), "name": "x", "division": "440106",
                               "licence_no": "1", "owner": "extra field"}, 400, "UNKNOWN_FIELD")
    # a schedule on a withdrawn route: refused (the route withdrawn, never deleted)
    route = await api.get(f"{ADMIN}/routes/{made['route']}", token=operator)
    withdrawn = await api.patch(f"{ADMIN}/routes/{made['route']}", {"status": "withdrawn"},
                                token=operator, headers={"If-Match": route.headers["Etag"]})
    assert withdrawn.status == 200 and withdrawn.body["status"] == "withdrawn"
    await refused("schedules", {"code": _code("S"), "route_id": made["route"],
                                "carrier_id": made["carrier"], "departs_at_local": "09:00",
                                "seats": 40}, 422, "ROUTE_WITHDRAWN")
    # a key field cannot be patched; an unknown record is a 404
    key = await api.patch(f"{ADMIN}/routes/{made['route']}", {"code": "OTHER"},
                          token=operator, headers={"If-Match": '"2"'})
    assert key.status == 400 and key.error_code == "UNKNOWN_FIELD"
    unknown = await api.get(f"{ADMIN}/vehicles/粤Z99999", token=operator)
    assert unknown.status == 404 and unknown.error_code == "RECORD_NOT_FOUND"

    after = {k: await db[k].count_documents({}) for k in before}
    # only the withdrawal was written (and audited)
    assert {**after, "audit": after["audit"] - 1} == before, (before, after)
    assert await db.routes.count_documents({"_id": made["route"]}) == 1


@pytest.mark.gen_test(timeout=120)
async def test_station_staff_work_on_their_own_station_only(api: ApiClient, db) -> None:
    staff = await api.login("station_staff")  # 440111001
    token, own = staff["token"], staff["staff"]["station_id"]
    schedules = await api.get(f"{ADMIN}/schedules?limit=1000", token=token)
    assert schedules.status == 200 and schedules.body["total"] > 0
    assert {s["station_id"] for s in schedules.body["schedules"]} == {own}
    other = await db.schedules.find_one({"station_id": {"$ne": own}})
    hidden = await api.get(f"{ADMIN}/schedules/{other['_id']}", token=token)
    assert hidden.status == 404
    mine = schedules.body["schedules"][0]
    changed = await api.patch(f"{ADMIN}/schedules/{mine['id']}", {"seats": mine["seats"]},
                              token=token, headers={"If-Match": f'"{mine["version"]}"'})
    assert changed.status == 200, changed.text
    denied = await api.post(f"{ADMIN}/carriers", {"code": _code("C"), "name": "x",
                                                  "division": "440106", "licence_no": "1"},
                            token=token)
    assert denied.status == 403 and denied.error_code == "FORBIDDEN"
    stations = await api.get(f"{ADMIN}/stations", token=token)
    assert [s["id"] for s in stations.body["stations"]] == [own]
    fares = await api.get(f"{ADMIN}/fares?limit=1000", token=token)
    routes = {r["_id"] for r in await db.routes.find({"origin_station_id": own}).to_list()}
    assert fares.body["total"] > 0 and {f["route_id"] for f in fares.body["fares"]} <= routes

"""Staff see only their scope: every route, called by a staff member of each scoped role with
the identifiers of another region's departure, order, ticket and station, answers 404 (one
object) or leaves them out (lists) — never shows them.

The demo binds the authority to 广州市 (440100) and the station roles to 广州市汽车客运站;
the objects below belong to a 深圳 station, outside all of those scopes.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from server.clock import local_today
from tests.booking_support import issued_order, person
from tests.reliability import record
from tests.support import ApiClient

SCOPED_ROLES = ("authority", "station_staff", "gate", "kiosk", "agent", "phone_agent")


async def shenzhen_objects(api: ApiClient, db, services) -> dict[str, str]:
    from tests.booking_support import member

    native = await db.stations.distinct("_id", {"system.vendor": "native",
                                                "division": {"$regex": "^4403"}})
    day = (local_today() + dt.timedelta(days=3)).isoformat()
    dep = await db.departures.find_one({"station_id": {"$in": native}, "status": "on_sale",
                                        "service_date": day}, sort=[("_id", 1)])
    order = await issued_order(api, services, await member(api), dep["_id"], [person()])
    return {"departure_id": dep["_id"], "id": dep["_id"], "station_id": dep["station_id"],
            "order_no": order["order_no"], "ticket_no": order["tickets"][0]["ticket_no"],
            "scope": "departure", "ref": dep["_id"], "schedule_id": dep.get("schedule_id", "")}


@pytest.mark.reliability("R11")
@pytest.mark.gen_test(timeout=180)
async def test_every_route_keeps_other_regions_out_of_scope(api: ApiClient, db,
                                                            services) -> None:
    theirs = await shenzhen_objects(api, db, services)
    secret = re.compile("|".join(re.escape(v) for v in (theirs["departure_id"],
                                                         theirs["order_no"],
                                                         theirs["ticket_no"])))
    spec = (await api.get("/api/openapi.json")).body
    checked = 0
    for role in SCOPED_ROLES:
        token = (await api.login(role))["token"]
        for path, item in spec["paths"].items():
            for method, op in item.items():
                if role not in op.get("x-roles", []) or not path.startswith("/api/"):
                    continue
                holes = re.findall(r"\{(\w+)\}", path)
                if any(h not in theirs for h in holes):
                    continue  # not about a station's objects (providers, passengers, …)
                url = path
                for hole in holes:
                    url = url.replace("{" + hole + "}", theirs[hole])
                if method == "get":
                    resp = await api.get(url, token=token)
                elif holes:  # a write on another region's object: refused before anything
                    resp = await api.request(method.upper(), url, json_body=WRITES.get(
                        path, {}), token=token)
                else:
                    continue
                checked += 1
                where = f"{role} {method.upper()} {url}"
                assert resp.status < 500, where
                if holes:
                    assert resp.status in (404, 403) or (
                        method != "get" and resp.status == 400), (where, resp.text)
                    assert not (200 <= resp.status < 300), where
                elif resp.status == 200:
                    assert not secret.search(resp.text), where
    assert checked > 20
    record("R11", load=f"{checked} calls: every route of the OpenAPI document as each "
                       f"scoped role ({len(SCOPED_ROLES)}) on another region's departure, "
                       "order and ticket",
           faults="requests across the scope boundary",
           checked="status of each; bodies searched for the other region's identifiers",
           figure=f"{checked} of {checked} refused (404/403) or answered without the other "
                  "region's data; 0 5xx")


# bodies valid enough to reach the scope check of each write
WRITES = {
    "/api/v1/tickets/{ticket_no}/void": {"reason": "misissued"},
    "/api/v1/gate/departures/{departure_id}/sign-off": {"driver_name": "张师傅"},
    "/api/v1/tickets/{ticket_no}/refund": {},
    "/api/v1/tickets/{ticket_no}/change": {"departure_id": "x"},
    "/api/v1/orders/{order_no}/cancel": {},
    "/api/v1/orders/{order_no}/pay": {"method": "cash", "tendered": 100000},
}


@pytest.mark.gen_test(timeout=60)
async def test_exchange_status_shows_an_authority_only_its_region(api: ApiClient) -> None:
    operator = (await api.login("operator"))["token"]
    every = {s["station_id"] for s in (await api.get("/api/v1/admin/exchange/stations",
                                                     token=operator)).body["stations"]}
    assert "440304001" in every  # 深圳福田 runs its own system
    gz = (await api.login("authority"))["token"]
    seen = {s["station_id"] for s in (await api.get("/api/v1/admin/exchange/stations",
                                                    token=gz)).body["stations"]}
    assert not any(s.startswith("4403") for s in seen)
    gd = (await api.login("authority_gd"))["token"]
    assert (await api.get("/api/v1/admin/exchange/stations", token=gd)).body["stations"]

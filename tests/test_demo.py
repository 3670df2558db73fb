"""The demo province: big enough to be meaningful, plausible, reproducible, planned ahead."""

from __future__ import annotations

import datetime as dt

import pytest

from devstack import demo
from server.clock import LOCAL_TZ, local_today


def test_generation_is_reproducible() -> None:
    assert demo.generate() == demo.generate()


def test_generated_network_is_consistent() -> None:
    data = demo.generate()
    stations = {s["_id"]: s for s in data["stations"]}
    routes = {r["_id"]: r for r in data["routes"]}
    for route in data["routes"]:
        stops = sorted((s for s in data["stops"] if s["route_id"] == route["_id"]),
                       key=lambda s: s["seq"])
        assert stops[0]["station_id"] == route["origin_station_id"]
        assert stops[-1]["station_id"] == route["destination_station_id"]
        kms = [s["distance_km"] for s in stops]
        assert kms == sorted(kms) and len(set(kms)) == len(kms)
        assert kms[-1] == route["distance_km"]
    for fare in data["fares"]:
        prices = fare["prices"]
        assert all(isinstance(v, int) for v in prices.values())
        assert prices["child"] < prices["adult"] <= fare["guide_price"]
        assert fare["station_fee"] < prices["adult"]
        assert fare["route_id"] in routes
    for schedule in data["schedules"]:
        assert schedule["station_id"] in stations


@pytest.mark.gen_test
async def test_demo_province_is_loaded_at_size(db) -> None:
    stations = await db.stations.find().to_list()
    assert len(stations) >= 30
    assert len({s["city"] for s in stations}) >= 8
    assert {s["grade"] for s in stations} >= {1, 2, 3}
    assert all(len(s["location"]["coordinates"]) == 2 for s in stations)
    assert await db.carriers.count_documents({}) >= 10
    assert await db.vehicles.count_documents({}) >= 150
    assert await db.routes.count_documents({}) >= 60
    # the demo's own routes (tests add single-departure routes "RT…" without a timetable)
    route_ids = await db.routes.distinct("_id", {"_id": {"$not": {"$regex": "^RT"}}})
    assert set(await db.stops.distinct("route_id")) >= set(route_ids)
    assert set(await db.schedules.distinct("route_id")) == set(route_ids)
    assert await db.fares.count_documents({"prices.student": {"$exists": True},
                                           "prices.senior": {"$exists": True}}) >= 60


async def demo_service_dates(db) -> list[str]:
    """The service days of the demo's own departures, from the day the demo was loaded: today,
    or yesterday when the suite crossed midnight (tests' "RT…" routes may reach into the past)."""
    dates = sorted(await db.departures.distinct(
        "service_date", {"route_id": {"$not": {"$regex": "^RT"}}}))
    today = local_today()
    assert dt.date.fromisoformat(dates[0]) in (today, today - dt.timedelta(days=1))
    return dates


@pytest.mark.gen_test
async def test_departures_cover_the_days_on_sale_and_the_next(db) -> None:
    # ten days on sale (the default rules) and the one going on sale at the next midnight
    dates = await demo_service_dates(db)
    start = dt.date.fromisoformat(dates[0])
    expected = [(start + dt.timedelta(days=i)).isoformat() for i in range(11)]
    assert dates[:11] == expected
    schedules = await db.schedules.count_documents({"status": "active"})
    assert await db.departures.count_documents({"service_date": expected[0]}) == schedules
    dep = await db.departures.find_one({"service_date": expected[3]})
    schedule = await db.schedules.find_one({"_id": dep["schedule_id"]})
    local = dep["departs_at"].astimezone(LOCAL_TZ)
    assert local.strftime("%H:%M") == schedule["departs_at_local"]
    assert local.date().isoformat() == dep["service_date"]
    assert dep["vehicle_id"] and dep["driver_ids"] and dep["seats"] > 0


@pytest.mark.gen_test
async def test_planning_again_creates_nothing_new(db) -> None:
    from server.services.planning import plan_departures

    count = await db.departures.count_documents({})
    start = dt.date.fromisoformat((await demo_service_dates(db))[0])
    assert await plan_departures(db, start, 11) == 0
    assert await db.departures.count_documents({}) == count


@pytest.mark.gen_test
async def test_every_role_has_a_demo_user_named_after_it(db) -> None:
    from server.security.principal import STAFF_ROLES

    usernames = set(await db.staff.distinct("username"))
    assert set(STAFF_ROLES) <= usernames
    authority = await db.staff.find_one({"username": "authority"})
    assert authority["region"] == "440100"

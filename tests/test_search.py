"""Search and station look-up over real HTTP."""

from __future__ import annotations

import datetime as dt

import pytest

from server.clock import local_today
from tests.support import ApiClient


def day(offset: int = 1) -> str:
    return (local_today() + dt.timedelta(days=offset)).isoformat()


@pytest.mark.gen_test
async def test_station_lookup_by_chinese_pinyin_and_initials(api: ApiClient) -> None:
    for q in ("广州", "guangzhou", "gz", "GZ"):
        resp = await api.get(f"/api/v1/stations?q={q}")
        assert resp.status == 200
        cities = {s["city"] for s in resp.body["stations"]}
        assert "广州" in cities, q
    names = [s["name"] for s in (await api.get("/api/v1/stations?q=tianhe")).body["stations"]]
    assert names == ["广州天河客运站"]
    only = await api.get("/api/v1/stations?city=深圳")
    assert {s["city"] for s in only.body["stations"]} == {"深圳"}


@pytest.mark.gen_test
async def test_city_to_city_search_sorted_with_fares_and_seats(api: ApiClient) -> None:
    resp = await api.get(f"/api/v1/departures?from=广州&to=深圳&date={day(2)}")
    assert resp.status == 200, resp.text
    found = resp.body["departures"]
    assert len(found) >= 3
    times = [d["departs_at"] for d in found]
    assert times == sorted(times)
    for d in found:
        assert d["from"]["city"] == "广州" and d["to"]["city"] == "深圳"
        assert d["from"]["seq"] < d["to"]["seq"]
        assert d["fares"]["adult"] > d["fares"]["child"] > 0
        assert isinstance(d["fares"]["adult"], int) and d["remaining"] >= 0
        assert d["on_sale_online"] is True and d["carrier"]["name"]
        assert d["departs_at"].endswith("+08:00")
    pinyin = await api.get(f"/api/v1/departures?from=gz&to=shenzhen&date={day(2)}")
    assert [d["id"] for d in pinyin.body["departures"]] == [d["id"] for d in found]


@pytest.mark.gen_test
async def test_intermediate_boarding_and_filters(api: ApiClient) -> None:
    found = (await api.get(f"/api/v1/departures?from=广州&to=深圳&date={day(3)}")).body[
        "departures"]
    midway = [d for d in found if d["from"]["seq"] > 0]
    assert midway, "a route passing through 广州 boards there too"
    assert all(d["boards_at"] > d["departs_at"] for d in midway)
    window = await api.get(f"/api/v1/departures?from=广州&to=深圳&date={day(3)}"
                           "&after=12:00&before=18:00")
    assert all("12:00" <= d["boards_at"][11:16] <= "18:00" for d in window.body["departures"])
    assert len(window.body["departures"]) < len(found)
    station = found[0]["station"]["id"]
    one = await api.get(f"/api/v1/departures?from=广州&to=深圳&date={day(3)}"
                        f"&station={station}")
    assert {d["station"]["id"] for d in one.body["departures"]} == {station}


@pytest.mark.gen_test
async def test_proxied_departures_come_with_station_seats(api: ApiClient) -> None:
    resp = await api.get(f"/api/v1/departures?from=440304001&to=珠海&date={day(4)}")
    found = resp.body["departures"]
    assert found and all(d["station"]["id"] == "440304001" for d in found)
    assert all(d["remaining"] > 0 for d in found)


@pytest.mark.gen_test
async def test_bad_search_queries(api: ApiClient) -> None:
    for query in (f"from=广州&to=深圳&date={day(-1)}", f"from=广州&to=深圳&date={day(30)}"):
        resp = await api.get(f"/api/v1/departures?{query}")  # a day, but not one on sale
        assert resp.status == 422 and resp.error_code == "DATE_NOT_ON_SALE", query
    for query, field in [("from=广州&to=深圳&date=tomorrow", "date"),
                         (f"from=广州&date={day(1)}", "to"),
                         (f"from=广州&to=深圳&date={day(1)}&after=25:00", "after")]:
        resp = await api.get(f"/api/v1/departures?{query}")
        assert resp.status == 400 and resp.error_code == "INVALID_QUERY", query
        assert resp.body["error"]["field"] == field, query
    nowhere = await api.get(f"/api/v1/departures?from=广州&to=拉萨&date={day(1)}")
    assert nowhere.status == 200 and nowhere.body["departures"] == []

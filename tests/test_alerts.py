"""Operations alerts (issue 14, item 6) over real HTTP and WebSocket: the watch opens one alert
per cause while it lasts and ends it when the cause goes away, each with when it started
and ended; operators see them pushed live, other roles cannot watch."""

from __future__ import annotations

import datetime as dt

import pytest

from server.services.alerts import OperationsWatch
from tests.booking_support import issued_order, member, person
from tests.inventory_support import make_departure
from tests.support import ApiClient
from tests.ws_support import Ws


@pytest.mark.gen_test(timeout=120)
async def test_alerts_open_and_end_with_their_cause_and_are_pushed(api: ApiClient, keyun, db,
                                                                  services) -> None:
    operator = (await api.login("operator"))["token"]
    watch = OperationsWatch(db, services.alerts)
    ws = await Ws.connect(keyun.base_url, operator)
    try:
        subscribed, frames = await ws.subscribe("alerts:ops")
        assert subscribed["type"] == "subscribed", subscribed
        assert frames[0]["type"] == "snapshot" and "alerts" in frames[0]["data"]

        # a station's system goes down: one alert, pushed; it comes back: the alert ends
        station = "440902001"
        await services.seats.mark_offline(station, "test: connection refused")
        await watch.run()
        opened, _ = await ws.until(lambda f: f.get("event") == "opened"
                                   and f["data"]["key"] == f"station:{station}", within=10)
        assert opened["data"]["kind"] == "station_offline"
        await watch.run()  # still down: the same alert, not a second one
        listed = (await api.get("/api/v1/admin/alerts", token=operator)).body["alerts"]
        mine = [a for a in listed if a["key"] == f"station:{station}"]
        assert len(mine) == 1 and mine[0]["status"] == "open" and mine[0]["count"] == 2
        await services.seats.mark_online(station)
        await watch.run()
        await ws.until(lambda f: f.get("event") == "closed"
                       and f["data"]["key"] == f"station:{station}", within=10)
        ended = (await api.get("/api/v1/admin/alerts?status=closed", token=operator)
                 ).body["alerts"]
        record = next(a for a in ended if a["key"] == f"station:{station}")
        assert record["ended_by"] == "system"
        assert dt.datetime.fromisoformat(record["ended_at"]) >= \
            dt.datetime.fromisoformat(record["created_at"])

        # five refunds on one departure within ten minutes: a spike
        dep = await make_departure(db, seats=10, departs_in=dt.timedelta(days=2))
        token = await member(api)
        order = await issued_order(api, services, token, dep, [person() for _ in range(5)])
        for ticket in order["tickets"]:
            done = await api.post(f"/api/v1/tickets/{ticket['ticket_no']}/refund", {},
                                  token=token)
            assert done.status == 200, done.text
        await watch.run()
        spike, _ = await ws.until(lambda f: f.get("event") == "opened"
                                  and f["data"]["key"] == f"refund-spike:{dep}", within=10)
        assert spike["data"]["details"]["refunds"] == 5
    finally:
        ws.close()

    gate = (await api.login("gate"))["token"]
    outsider = await Ws.connect(keyun.base_url, gate)
    try:
        refused, _ = await outsider.subscribe("alerts:ops")
        assert refused["type"] == "error" and refused["code"] == "FORBIDDEN"
    finally:
        outsider.close()

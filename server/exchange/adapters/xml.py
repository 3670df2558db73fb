"""Adapter for the legacy XML station dialect: one endpoint, GBK, MD5-signed both ways."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

from server.exchange.adapters import xmlcodec
from server.exchange.adapters.http import HttpStationExchange, need
from server.exchange.base import (
    VEHICLE_GRADES,
    Availability,
    DepartureRef,
    Health,
    Hold,
    HoldRequest,
    Sale,
    SaleLine,
    SaleStatus,
    SyncBatch,
    TicketInfo,
)
from server.exchange.errors import (
    BadStationResponse,
    DepartureNotFound,
    DepartureStopped,
    ExchangeError,
    HoldExpired,
    InvalidSegment,
    SaleNotFound,
    SeatTaken,
    SoldOut,
    StationUnreachable,
)

STATE_IN = {"1": "on_sale", "2": "stopped", "3": "cancelled"}
ERRORS: dict[str, type[ExchangeError]] = {
    "2001": SeatTaken, "2002": SoldOut, "2003": DepartureStopped, "2004": HoldExpired,
    "2005": SaleNotFound, "2006": DepartureNotFound, "3001": InvalidSegment,
}
ORDER_STATES = {"LOCKED": "held", "SOLD": "sold", "REFUNDED": "returned", "VOIDED": "returned"}


def _seats(text: Any) -> tuple[int, ...]:
    if not isinstance(text, str):
        raise BadStationResponse(detail="seat list")
    try:
        return tuple(int(s) for s in text.split(",") if s)
    except ValueError:
        raise BadStationResponse(detail=f"seat list {text!r}") from None


class XmlExchange(HttpStationExchange):
    """A station system speaking the legacy XML dialect."""

    identifier = "xml"

    def __init__(self, base_url: str, secret: str, *, app_id: str = "keyun",
                 timeout: float = 5.0) -> None:
        super().__init__(base_url, secret, timeout=timeout)
        self.app_id = app_id

    async def call(self, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one signed request; verify the signed answer; map its status code."""
        body = {k: str(v) for k, v in (body or {}).items()}
        head = {"op": op, "appId": self.app_id,
                "timestamp": xmlcodec.local_time(dt.datetime.now(dt.UTC)),
                "nonce": uuid.uuid4().hex[:16]}
        head["sign"] = xmlcodec.sign(head, body, self.secret)
        response = await self.send("POST", "/service", body=xmlcodec.encode("request", head, body),
                                   headers={"Content-Type": "text/xml; charset=GBK"})
        try:
            root, rhead, rbody = xmlcodec.decode(response.body or b"")
        except xmlcodec.XmlFormatError as exc:
            raise BadStationResponse(detail=str(exc)[:200]) from None
        if root != "response" or not xmlcodec.verify(rhead, rbody, self.secret):
            raise BadStationResponse(detail="signature or timestamp of the answer")
        code = rhead.get("code", "")
        if code == "0000":
            return rbody
        if code == "1001":
            raise StationUnreachable(detail="station refused our signature")
        kind = ERRORS.get(code)
        if kind is None:
            raise BadStationResponse(detail=f"code {code} {rhead.get('msg', '')}")
        raise kind(detail=rhead.get("msg", ""))

    async def health(self) -> Health:
        started = time.perf_counter()
        await self.call("PING")
        return Health(True, 1000 * (time.perf_counter() - started))

    async def remaining(self, departure: DepartureRef) -> Availability:
        b = await self.call("Q_SEAT", {"fcbh": departure.vendor_ref})
        seats, legs = need(b, "zws", int), need(b, "dsl", int)
        occupancy = [0] * seats
        for entry in need(b, "seats", list):
            seat = need(entry, "zwh", int)
            if not 1 <= seat <= seats:
                raise BadStationResponse(detail=f"seat {seat}")
            occupancy[seat - 1] = need(entry, "zy", int)
        state = STATE_IN.get(str(b.get("zt")))
        if state is None:
            raise BadStationResponse(detail="state")
        return Availability(departure.id, seats, legs,
                            "on_sale" if state == "on_sale" else "stopped",
                            sum(1 for m in occupancy if m == 0), tuple(occupancy))

    async def hold(self, departure: DepartureRef, request: HoldRequest) -> Hold:
        b = await self.call("LOCK_SEAT", {
            "fcbh": departure.vendor_ref, "sdh": request.hold_id, "sl": request.count,
            "zwh": ",".join(str(s) for s in request.seats), "qxh": request.from_seq,
            "zxh": request.to_seq, "sdsc": request.ttl_seconds})
        try:
            expires = xmlcodec.parse_local_time(str(b.get("sxsj"))).astimezone(dt.UTC)
        except ValueError:
            raise BadStationResponse(detail="expiry time") from None
        return Hold(request.hold_id, departure.id, _seats(b.get("zwh")), request.from_seq,
                    request.to_seq, expires, vendor_ref=str(b.get("sdh", "")))

    async def release(self, departure: DepartureRef, hold_id: str) -> bool:
        return (await self.call("UNLOCK_SEAT", {"sdh": hold_id})).get("jg") == "1"

    async def sell(self, departure: DepartureRef, hold_id: str,
                   tickets: list[TicketInfo]) -> Sale:
        b = await self.call("SELL", {"sdh": hold_id, "rs": len(tickets),
                                     "pj": ",".join(str(t.price) for t in tickets)})
        issued = need(b, "tickets", list)
        return Sale(str(need(b, "ddh", str)), departure.id,
                    tuple(need(t, "zwh", int) for t in issued),
                    tuple(str(need(t, "ph", str)) for t in issued))

    async def daily_sales(self, day: dt.date) -> list[SaleLine]:
        b = await self.call("Q_DAILY_SALES", {"rq": day.strftime("%Y%m%d")})
        out = []
        for line in need(b, "sales", list):
            try:
                at = xmlcodec.parse_local_time(str(need(line, "sj", str)))
            except ValueError:
                raise BadStationResponse(detail="field 'sj'") from None
            out.append(SaleLine(str(need(line, "ddh", str)), need(line, "zwh", int),
                                str(need(line, "ph", str)), need(line, "pj", int),
                                "sale" if line.get("lx") == "1" else "return", at,
                                line.get("qd") == "2"))
        return out

    async def query(self, departure: DepartureRef, sale_id: str) -> SaleStatus:
        try:
            b = await self.call("Q_ORDER", {"ddh": sale_id})
        except SaleNotFound:
            return SaleStatus(sale_id, "unknown")
        return SaleStatus(sale_id, ORDER_STATES.get(str(b.get("zt")), "unknown"),
                          _seats(b.get("zwh", "")))

    async def refund(self, departure: DepartureRef, sale_id: str,
                     seats: tuple[int, ...]) -> tuple[int, ...]:
        b = await self.call("REFUND", {"ddh": sale_id, "zwh": ",".join(map(str, seats))})
        return _seats(b.get("zwh", ""))

    async def void(self, departure: DepartureRef, sale_id: str,
                   seats: tuple[int, ...]) -> tuple[int, ...]:
        b = await self.call("VOID", {"ddh": sale_id, "zwh": ",".join(map(str, seats))})
        return _seats(b.get("zwh", ""))

    async def pickup(self, departure: DepartureRef, sale_id: str, seat: int) -> str:
        return str(need(await self.call("PICKUP", {"ddh": sale_id, "zwh": seat}), "ph", str))

    async def pull(self, since: str | None = None) -> SyncBatch:
        batch = SyncBatch()
        if since is None:
            for s in need(await self.call("Q_STATION"), "stations", list):
                code = need(s, "zdbm", str)
                batch.stations.append({
                    "_id": code, "code": code, "name": need(s, "zdmc", str),
                    "grade": need(s, "zddj", int), "division": need(s, "xzqh", str),
                    "city": need(s, "csmc", str), "address": s.get("dz", ""),
                    "location": {"type": "Point",
                                 "coordinates": [float(s["jd"]), float(s["wd"])]}})
            fleet = await self.call("Q_CARRIER")
            for c in need(fleet, "carriers", list):
                code = need(c, "qybm", str)
                batch.carriers.append({"_id": code, "code": code, "name": need(c, "qymc", str),
                                       "division": need(c, "xzqh", str),
                                       "licence_no": c.get("xkzh", "")})
            for v in need(fleet, "vehicles", list):
                plate, grade = need(v, "cph", str), VEHICLE_GRADES.get(v.get("dj", ""))
                if grade is None:
                    raise BadStationResponse(detail=f"vehicle grade {v.get('dj')!r}")
                batch.vehicles.append({"_id": plate, "plate": plate,
                                       "carrier_id": need(v, "qybm", str),
                                       "model": v.get("cx", ""), "seats": need(v, "zws", int),
                                       "grade": grade})
            for d in need(fleet, "drivers", list):
                cert = need(d, "zgzh", str)
                batch.drivers.append({"_id": cert, "licence_no": cert,
                                      "carrier_id": need(d, "qybm", str),
                                      "name": need(d, "xm", str),
                                      "licence_class": d.get("zjcx", "")})
            routes = await self.call("Q_ROUTE")
            stop_counts: dict[str, int] = {}
            for s in need(routes, "stops", list):
                route = need(s, "xlbm", str)
                stop_counts[route] = stop_counts.get(route, 0) + 1
            for r in need(routes, "routes", list):
                code = need(r, "xlbm", str)
                batch.routes.append({
                    "_id": code, "code": code, "name": need(r, "xlmc", str),
                    "origin_station_id": need(r, "qdz", str),
                    "destination_station_id": need(r, "zdz", str),
                    "distance_km": need(r, "lc", int), "highway_km": need(r, "gslc", int)})
            for s in need(routes, "stops", list):
                route, seq = s["xlbm"], need(s, "xh", int)
                batch.stops.append({
                    "_id": f"{route}-{seq}", "route_id": route, "seq": seq,
                    "station_id": s.get("zdbm", ""), "name": need(s, "zdmc", str),
                    "city": need(s, "csmc", str), "division": need(s, "xzqh", str),
                    "distance_km": need(s, "lc", int),
                    "boarding": s.get("sc", "1" if seq < stop_counts[route] - 1 else "0") == "1",
                    "alighting": s.get("xc", "1" if seq > 0 else "0") == "1"})
            for f in need(routes, "prices", list):
                route, i, j = f["xlbm"], need(f, "qxh", int), need(f, "zxh", int)
                batch.fares.append({
                    "_id": f"{route}-{i}-{j}", "route_id": route, "from_seq": i, "to_seq": j,
                    "guide_price": need(f, "zdj", int), "station_fee": need(f, "zwf", int),
                    "prices": {k[3:]: need(f, k, int) for k in f if k.startswith("pj_")}})
            for s in need(await self.call("Q_SCHEDULE"), "schedules", list):
                code, hhmm = need(s, "bcbm", str), need(s, "fcsj", str)
                if len(hhmm) != 4 or not hhmm.isdigit():
                    raise BadStationResponse(detail="schedule time")
                batch.schedules.append({
                    "_id": code, "code": code, "route_id": need(s, "xlbm", str),
                    "station_id": need(s, "zdbm", str), "carrier_id": need(s, "qybm", str),
                    "departs_at_local": f"{hhmm[:2]}:{hhmm[2:]}",
                    "nature": "regular" if s.get("bcxz") == "1" else "extra",
                    "type": s.get("bclx") or "normal", "seats": need(s, "zws", int)})
        trips = await self.call("Q_TRIP", {"since": since or ""})
        for t in need(trips, "trips", list):
            schedule, run_date = need(t, "bcbm", str), need(t, "fcrq", str)
            state = STATE_IN.get(str(t.get("zt")))
            if state is None or len(run_date) != 8:
                raise BadStationResponse(detail="trip")
            try:
                departs = xmlcodec.parse_local_time(need(t, "fcsj", str))
            except ValueError:
                raise BadStationResponse(detail="trip time") from None
            iso_date = f"{run_date[:4]}-{run_date[4:6]}-{run_date[6:]}"
            batch.departures.append({
                "_id": f"{schedule}-{run_date}", "schedule_id": schedule,
                "schedule_code": schedule, "route_id": need(t, "xlbm", str),
                "station_id": need(t, "zdbm", str), "service_date": iso_date,
                "departs_at": departs.astimezone(dt.UTC), "seats": need(t, "zws", int),
                "status": state, "vendor_ref": need(t, "fcbh", str)})
        batch.cursor = str(need(trips, "serverTime", str))
        return batch

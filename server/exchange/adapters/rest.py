"""Adapter for the JSON REST station dialect (bearer token, JSON, ISO times with offset)."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from server.clock import LOCAL_TZ
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

STATUS_IN = {"SELLING": "on_sale", "STOPPED": "stopped", "CANCELLED": "cancelled"}
ERRORS: dict[str, type[ExchangeError]] = {
    "SEAT_OCCUPIED": SeatTaken, "NO_SEATS": SoldOut, "TRIP_CLOSED": DepartureStopped,
    "TRIP_NOT_FOUND": DepartureNotFound, "LOCK_NOT_FOUND": HoldExpired,
    "ORDER_NOT_FOUND": SaleNotFound, "BAD_REQUEST": InvalidSegment,
}
ORDER_STATES = {"LOCKED": "held", "SOLD": "sold", "REFUNDED": "returned", "VOIDED": "returned"}


def _time(text: Any) -> dt.datetime:
    if not isinstance(text, str):
        raise BadStationResponse(detail="time")
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadStationResponse(detail=f"time {text!r}") from None
    if value.tzinfo is None:
        raise BadStationResponse(detail="time without offset")
    return value.astimezone(dt.UTC)


class RestExchange(HttpStationExchange):
    """A station system speaking the StationLink REST dialect."""

    identifier = "rest"

    async def _json(self, method: str, path: str, body: Any = None,
                    ok: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
        response = await self.send(
            method, path, body=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.secret}",
                     "Content-Type": "application/json"})
        try:
            payload = json.loads(response.body or b"null")
        except ValueError:
            raise BadStationResponse(detail="not JSON") from None
        if response.code == 401:
            raise StationUnreachable(detail="credentials refused")
        if response.code not in ok:
            code = payload.get("errorCode") if isinstance(payload, dict) else None
            kind = ERRORS.get(str(code))
            if kind is None:
                raise BadStationResponse(detail=f"HTTP {response.code} {code}")
            raise kind(detail=str(payload.get("errorMsg", "")))
        if not isinstance(payload, dict):
            raise BadStationResponse(detail="not an object")
        return payload

    async def health(self) -> Health:
        started = time.perf_counter()
        payload = await self._json("GET", "/api/health")
        return Health(payload.get("status") == "UP", 1000 * (time.perf_counter() - started))

    async def remaining(self, departure: DepartureRef) -> Availability:
        p = await self._json("GET", f"/api/trips/{departure.vendor_ref}/seats")
        seats, legs = need(p, "seatCount", int), need(p, "legs", int)
        occupancy = [0] * seats
        for entry in need(p, "taken", list):
            seat = need(entry, "seatNo", int)
            if not 1 <= seat <= seats:
                raise BadStationResponse(detail=f"seat {seat}")
            for leg in need(entry, "legs", list):
                occupancy[seat - 1] |= 1 << int(leg)
        state = STATUS_IN.get(str(p.get("state")))
        if state is None:
            raise BadStationResponse(detail="state")
        return Availability(departure.id, seats, legs, "on_sale" if state == "on_sale"
                            else "stopped", sum(1 for m in occupancy if m == 0),
                            tuple(occupancy))

    async def hold(self, departure: DepartureRef, request: HoldRequest) -> Hold:
        p = await self._json("POST", f"/api/trips/{departure.vendor_ref}/locks", {
            "lockId": request.hold_id, "count": request.count, "seatNos": list(request.seats),
            "fromOrder": request.from_seq, "toOrder": request.to_seq,
            "ttlSeconds": request.ttl_seconds, "channel": request.channel})
        seats = tuple(int(s) for s in need(p, "seatNos", list))
        return Hold(request.hold_id, departure.id, seats, request.from_seq, request.to_seq,
                    _time(p.get("expiresAt")), vendor_ref=str(need(p, "lockId", str)))

    async def release(self, departure: DepartureRef, hold_id: str) -> bool:
        p = await self._json("DELETE", f"/api/locks/{hold_id}")
        return bool(p.get("released"))

    async def sell(self, departure: DepartureRef, hold_id: str,
                   tickets: list[TicketInfo]) -> Sale:
        p = await self._json("POST", f"/api/locks/{hold_id}/sell", {"passengers": [
            {"seatNo": t.seat, "name": t.passenger_name, "ticketType": t.ticket_type,
             "priceFen": t.price} for t in tickets]})
        issued = need(p, "tickets", list)
        return Sale(str(need(p, "orderId", str)), departure.id,
                    tuple(need(t, "seatNo", int) for t in issued),
                    tuple(str(need(t, "ticketNo", str)) for t in issued))

    async def daily_sales(self, day: dt.date) -> list[SaleLine]:
        p = await self._json("GET", f"/api/reports/daily-sales?date={day.isoformat()}")
        out = []
        for line in need(p, "lines", list):
            try:
                at = dt.datetime.fromisoformat(str(need(line, "at", str)))
            except ValueError:
                raise BadStationResponse(detail="field 'at'") from None
            out.append(SaleLine(str(need(line, "orderId", str)), need(line, "seatNo", int),
                                str(need(line, "ticketNo", str)), need(line, "priceFen", int),
                                "sale" if line.get("event") == "SALE" else "return",
                                at if at.tzinfo else at.replace(tzinfo=LOCAL_TZ),
                                line.get("channel") == "WINDOW"))
        return out

    async def query(self, departure: DepartureRef, sale_id: str) -> SaleStatus:
        try:
            p = await self._json("GET", f"/api/orders/{sale_id}")
        except SaleNotFound:
            return SaleStatus(sale_id, "unknown")
        return SaleStatus(sale_id, ORDER_STATES.get(str(p.get("state")), "unknown"),
                          tuple(int(s) for s in need(p, "seatNos", list)))

    async def _return_seats(self, action: str, sale_id: str, seats: tuple[int, ...]
                         ) -> tuple[int, ...]:
        p = await self._json("POST", f"/api/orders/{sale_id}/{action}", {"seatNos": list(seats)})
        return tuple(int(s) for s in need(p, "seatNos", list))

    async def refund(self, departure: DepartureRef, sale_id: str,
                     seats: tuple[int, ...]) -> tuple[int, ...]:
        return await self._return_seats("refund", sale_id, seats)

    async def void(self, departure: DepartureRef, sale_id: str,
                   seats: tuple[int, ...]) -> tuple[int, ...]:
        return await self._return_seats("void", sale_id, seats)

    async def pickup(self, departure: DepartureRef, sale_id: str, seat: int) -> str:
        p = await self._json("POST", f"/api/orders/{sale_id}/pickup", {"seatNo": seat})
        return str(need(p, "ticketNo", str))

    async def pull(self, since: str | None = None) -> SyncBatch:
        batch = SyncBatch()
        if since is None:
            stations = await self._json("GET", "/api/stations")
            for s in need(stations, "stations", list):
                batch.stations.append({
                    "_id": need(s, "stationCode", str), "code": s["stationCode"],
                    "name": need(s, "stationName", str), "grade": need(s, "level", int),
                    "division": need(s, "areaCode", str), "city": need(s, "cityName", str),
                    "address": s.get("address", ""),
                    "location": {"type": "Point", "coordinates": [float(s["lng"]),
                                                                  float(s["lat"])]}})
            carriers = await self._json("GET", "/api/carriers")
            for c in need(carriers, "carriers", list):
                code = need(c, "carrierCode", str)
                batch.carriers.append({"_id": code, "code": code,
                                       "name": need(c, "carrierName", str),
                                       "division": need(c, "areaCode", str),
                                       "licence_no": str(c.get("licenseNo", ""))})
                for v in need(c, "vehicles", list):
                    plate = need(v, "plateNo", str)
                    grade = VEHICLE_GRADES.get(str(v.get("level")))
                    if grade is None:
                        raise BadStationResponse(detail=f"vehicle grade {v.get('level')!r}")
                    batch.vehicles.append({"_id": plate, "plate": plate, "carrier_id": code,
                                           "model": str(v.get("model", "")),
                                           "seats": need(v, "seatCount", int), "grade": grade})
                for d in need(c, "drivers", list):
                    cert = need(d, "certNo", str)
                    batch.drivers.append({"_id": cert, "licence_no": cert, "carrier_id": code,
                                          "name": need(d, "driverName", str),
                                          "licence_class": str(d.get("certClass", ""))})
            routes = await self._json("GET", "/api/routes")
            for r in need(routes, "routes", list):
                code = need(r, "routeCode", str)
                batch.routes.append({
                    "_id": code, "code": code, "name": need(r, "routeName", str),
                    "origin_station_id": need(r, "fromStation", str),
                    "destination_station_id": need(r, "toStation", str),
                    "distance_km": need(r, "mileage", int),
                    "highway_km": int(r.get("highwayMileage", 0)),
                    "carrier_ids": [str(c) for c in r.get("carriers", [])]})
                stops = need(r, "stops", list)
                for s in stops:
                    seq = need(s, "order", int)
                    batch.stops.append({
                        "_id": f"{code}-{seq}", "route_id": code, "seq": seq,
                        "station_id": str(s.get("stationCode") or ""),
                        "name": need(s, "stopName", str), "city": need(s, "cityName", str),
                        "division": need(s, "areaCode", str), "distance_km": need(s, "km", int),
                        "boarding": bool(s.get("pickUp", seq < len(stops) - 1)),
                        "alighting": bool(s.get("dropOff", seq > 0))})
                for f in need(r, "prices", list):
                    i, j = need(f, "fromOrder", int), need(f, "toOrder", int)
                    prices = need(f, "fen", dict)
                    batch.fares.append({
                        "_id": f"{code}-{i}-{j}", "route_id": code, "from_seq": i, "to_seq": j,
                        "guide_price": need(f, "guideFen", int),
                        "station_fee": need(f, "stationFeeFen", int),
                        "prices": {k: need(prices, k, int) for k in prices}})
            schedules = await self._json("GET", "/api/schedules")
            for s in need(schedules, "schedules", list):
                code = need(s, "scheduleCode", str)
                batch.schedules.append({
                    "_id": code, "code": code, "route_id": need(s, "routeCode", str),
                    "station_id": need(s, "stationCode", str),
                    "carrier_id": need(s, "carrierCode", str),
                    "departs_at_local": need(s, "departTime", str),
                    "nature": "regular" if s.get("kind") == "REGULAR" else "extra",
                    "type": str(s.get("serviceType", "normal")).lower(),
                    "seats": need(s, "seatCount", int)})
        query = f"?since={since}" if since else ""
        trips = await self._json("GET", "/api/trips" + query.replace("+", "%2B"))
        for t in need(trips, "trips", list):
            run_date = need(t, "runDate", str)
            schedule = need(t, "scheduleCode", str)
            state = STATUS_IN.get(str(t.get("state")))
            if state is None:
                raise BadStationResponse(detail="trip state")
            departs = _time(t.get("departAt"))
            if departs.astimezone(LOCAL_TZ).date().isoformat() != run_date:
                raise BadStationResponse(detail="trip date and time disagree")
            batch.departures.append({
                "_id": f"{schedule}-{run_date.replace('-', '')}", "schedule_id": schedule,
                "schedule_code": schedule, "route_id": need(t, "routeCode", str),
                "station_id": need(t, "stationCode", str), "service_date": run_date,
                "departs_at": departs, "seats": need(t, "seatCount", int), "status": state,
                "vendor_ref": need(t, "tripId", str)})
        batch.cursor = str(need(trips, "serverTime", str))
        return batch

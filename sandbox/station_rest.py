"""Simulator of a JSON REST station system ("StationLink REST"): bearer token, JSON, ISO times.

    python -m sandbox.station_rest --port 9101 --stations 440304001,440303001 --token T

Its dialect on purpose differs from ours: trips not departures, ``seatNos``, ``fromOrder``,
camelCase, statuses SELLING/STOPPED/CANCELLED, errors as ``{"errorCode", "errorMsg"}``.
``/_control`` switches fault modes and drives the station's own window.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
from typing import Any

from tornado.web import Application, HTTPError, RequestHandler

from sandbox.station_core import SimError, StationSystem
from server.exchange.base import VEHICLE_GRADES

STATUS_OUT = {"on_sale": "SELLING", "stopped": "STOPPED", "cancelled": "CANCELLED"}
ERROR_STATUS = {"SEAT_TAKEN": 409, "SOLD_OUT": 409, "CLOSED": 422, "NO_LOCK": 404,
                "NO_ORDER": 404, "NO_TRIP": 404, "BAD": 400}
ERROR_CODE = {"SEAT_TAKEN": "SEAT_OCCUPIED", "SOLD_OUT": "NO_SEATS", "CLOSED": "TRIP_CLOSED",
              "NO_LOCK": "LOCK_NOT_FOUND", "NO_ORDER": "ORDER_NOT_FOUND",
              "NO_TRIP": "TRIP_NOT_FOUND", "BAD": "BAD_REQUEST"}


BEIJING = dt.timezone(dt.timedelta(hours=8))


def iso(value: dt.datetime) -> str:
    return value.astimezone(BEIJING).isoformat()


class SimHandler(RequestHandler):
    """Auth, fault modes, JSON in and out, errors in the vendor's words."""

    @property
    def system(self) -> StationSystem:
        return self.application.settings["system"]  # type: ignore[no-any-return]

    async def prepare(self) -> None:
        if self.request.path.startswith("/_control"):
            return
        faults = self.system.faults
        if faults["delay_ms"]:
            await asyncio.sleep(faults["delay_ms"] / 1000)
        if faults["fail"]:
            raise HTTPError(503)
        if self.request.headers.get("Authorization") != \
                f"Bearer {self.application.settings['token']}":
            self.set_status(401)
            self.finish({"errorCode": "UNAUTHORIZED", "errorMsg": "bad token"})
            return

    def reply(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        if self.system.faults["garbage"] and not self.request.path.startswith("/_control"):
            self.set_header("Content-Type", "application/json")
            self.finish('{"trips": [{"tripId": 12, "seatCount": "many"')
            return
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload, ensure_ascii=False))

    def body(self) -> dict[str, Any]:
        try:
            return json.loads(self.request.body or b"{}")  # type: ignore[no-any-return]
        except ValueError:
            raise SimError("BAD", "json") from None

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, SimError):
            self.reply({"errorCode": ERROR_CODE[e.reason], "errorMsg": e.detail},
                       ERROR_STATUS[e.reason])
            return
        super()._handle_request_exception(e)


class HealthHandler(SimHandler):
    def get(self) -> None:
        self.reply({"status": "UP", "time": iso(dt.datetime.now(dt.UTC))})


class StationsHandler(SimHandler):
    def get(self) -> None:
        self.reply({"stations": [
            {"stationCode": s["code"], "stationName": s["name"], "level": s["grade"],
             "areaCode": s["division"], "cityName": s["city"], "address": s["address"],
             "lng": s["location"]["coordinates"][0], "lat": s["location"]["coordinates"][1]}
            for s in self.system.stations]})


GRADE_NAMES = {ours: theirs for theirs, ours in VEHICLE_GRADES.items()}


class CarriersHandler(SimHandler):
    def get(self) -> None:
        self.reply({"carriers": [
            {"carrierCode": c["code"], "carrierName": c["name"], "areaCode": c["division"],
             "licenseNo": c.get("licence_no", ""),
             "vehicles": [{"plateNo": v["plate"], "model": v["model"], "seatCount": v["seats"],
                           "level": GRADE_NAMES[v["grade"]]}
                          for v in self.system.vehicles if v["carrier_id"] == c["_id"]],
             "drivers": [{"certNo": d["licence_no"], "driverName": d["name"],
                          "certClass": d["licence_class"]}
                         for d in self.system.drivers if d["carrier_id"] == c["_id"]]}
            for c in self.system.carriers]})


class RoutesHandler(SimHandler):
    def get(self) -> None:
        out = []
        for r in self.system.routes:
            out.append({
                "routeCode": r["code"], "routeName": r["name"], "mileage": r["distance_km"],
                "highwayMileage": r.get("highway_km", 0), "fromStation": r["origin_station_id"],
                "toStation": r["destination_station_id"], "carriers": r.get("carrier_ids", []),
                "stops": [{"order": s["seq"], "stationCode": s["station_id"],
                           "stopName": s["name"], "cityName": s["city"],
                           "areaCode": s["division"], "km": s["distance_km"],
                           "pickUp": s["boarding"], "dropOff": s["alighting"]}
                          for s in self.system.stops_of(r["code"])],
                "prices": [{"fromOrder": f["from_seq"], "toOrder": f["to_seq"],
                            "guideFen": f["guide_price"], "stationFeeFen": f["station_fee"],
                            "fen": f["prices"]} for f in self.system.fares_of(r["code"])]})
        self.reply({"routes": out})


class SchedulesHandler(SimHandler):
    def get(self) -> None:
        self.reply({"schedules": [
            {"scheduleCode": s["code"], "routeCode": s["route_id"], "stationCode": s["station_id"],
             "carrierCode": s["carrier_id"], "departTime": s["departs_at_local"],
             "kind": "REGULAR" if s["nature"] == "regular" else "EXTRA",
             "serviceType": s["type"].upper(), "seatCount": s["seats"]}
            for s in self.system.schedules]})


class TripsHandler(SimHandler):
    def get(self) -> None:
        since_raw = self.get_argument("since", None)
        since = dt.datetime.fromisoformat(since_raw) if since_raw else None
        self.reply({"serverTime": iso(dt.datetime.now(dt.UTC)), "trips": [
            {"tripId": t.trip_id, "scheduleCode": t.schedule_code, "routeCode": t.route_code,
             "stationCode": t.station_code, "runDate": t.service_date.isoformat(),
             "departAt": iso(t.departs_at), "seatCount": t.seats,
             "state": STATUS_OUT[t.status], "updatedAt": iso(t.updated_at)}
            for t in self.system.trips_since(since)]})


class SeatsHandler(SimHandler):
    def get(self, trip_id: str) -> None:
        with self.system._lock:
            self.system._expire()
            trip = self.system.trip(trip_id)
            taken = [{"seatNo": i + 1, "legs": [b for b in range(trip.segments) if m >> b & 1]}
                     for i, m in enumerate(trip.occupancy) if m]
        self.reply({"tripId": trip.trip_id, "seatCount": trip.seats, "legs": trip.segments,
                    "state": STATUS_OUT[trip.status], "taken": taken})


class LocksHandler(SimHandler):
    def post(self, trip_id: str) -> None:
        b = self.body()
        lock = self.system.lock(trip_id, str(b["lockId"]), int(b.get("count", 0)),
                                [int(s) for s in b.get("seatNos") or []],
                                int(b.get("fromOrder", 0)), int(b["toOrder"]),
                                int(b.get("ttlSeconds", 600)))
        self.reply({"lockId": lock.lock_id, "seatNos": lock.seats,
                    "expiresAt": iso(lock.expires_at)}, 201)


class LockHandler(SimHandler):
    def delete(self, lock_id: str) -> None:
        self.reply({"released": self.system.unlock(lock_id)})


class SellHandler(SimHandler):
    def post(self, lock_id: str) -> None:
        b = self.body()
        order = self.system.sell(lock_id, [int(p.get("priceFen", 0))
                                           for p in b.get("passengers") or []])
        self.reply({"orderId": order.order_id, "tickets": [
            {"seatNo": s, "ticketNo": order.tickets[s]} for s in order.seats]})


class OrderHandler(SimHandler):
    def get(self, order_id: str) -> None:
        if order_id in self.system.locks:
            lock = self.system.locks[order_id]
            self.reply({"orderId": order_id, "state": "LOCKED", "seatNos": lock.seats})
            return
        order = self.system.order(order_id)
        active = [s for s in order.seats if s not in order.returned]
        self.reply({"orderId": order_id, "state": order.status.upper(), "seatNos": active})


class OrderActionHandler(SimHandler):
    def post(self, order_id: str, action: str) -> None:
        b = self.body()
        if action == "pickup":
            self.reply({"ticketNo": self.system.pickup(order_id, int(b["seatNo"]))})
            return
        status = "refunded" if action == "refund" else "voided"
        freed = self.system.return_seats(order_id, [int(s) for s in b.get("seatNos", [])], status)
        self.reply({"orderId": order_id, "seatNos": freed})


class DailySalesHandler(SimHandler):
    """日售票明细 of a local day: ``GET /api/reports/daily-sales?date=YYYY-MM-DD``."""

    def get(self) -> None:
        try:
            day = dt.date.fromisoformat(self.get_argument("date", ""))
        except ValueError:
            raise SimError("BAD", "date") from None
        lines = self.system.daily_sales(day, BEIJING)
        self.reply({"date": day.isoformat(), "count": len(lines),
                    "totalFen": sum(ln["price"] for ln in lines if ln["event"] == "SALE"),
                    "lines": [{"orderId": ln["order_id"], "seatNo": ln["seat"],
                               "ticketNo": ln["ticket_no"], "priceFen": ln["price"],
                               "event": ln["event"], "channel": "WINDOW" if ln["window"]
                               else "NETWORK", "at": iso(ln["at"])} for ln in lines]})


class ControlHandler(SimHandler):
    """Test controls: faults, window sales, trip status, fares, state."""

    def get(self) -> None:
        self.reply({"faults": self.system.faults, "windowSales": self.system.window_sales,
                    "trips": len(self.system.trips), "locks": len(self.system.locks)})

    def post(self, action: str = "") -> None:
        b = self.body()
        if action == "window-sale":
            self.reply({"tripId": self.system.window_sale(b.get("tripId"), b.get("seatNo"))})
        elif action == "trip-status":
            self.system.set_status(b["tripId"], b["status"])
            self.reply({"ok": True})
        elif action == "price":
            self.system.change_price(b["routeCode"], int(b["adultFen"]))
            self.reply({"ok": True})
        elif action == "age":  # {"orderId", "days"}: sold (and given back) days earlier
            self.system.age(str(b["orderId"]), int(b.get("days", 1)))
            self.reply({"ok": True})
        else:
            self.system.faults.update({k: b[k] for k in ("delay_ms", "fail", "garbage")
                                       if k in b})
            self.reply({"faults": self.system.faults})


def make_app(system: StationSystem, token: str) -> Application:
    return Application([
        (r"/api/health", HealthHandler),
        (r"/api/stations", StationsHandler),
        (r"/api/carriers", CarriersHandler),
        (r"/api/routes", RoutesHandler),
        (r"/api/schedules", SchedulesHandler),
        (r"/api/trips", TripsHandler),
        (r"/api/trips/([^/]+)/seats", SeatsHandler),
        (r"/api/trips/([^/]+)/locks", LocksHandler),
        (r"/api/locks/([^/]+)", LockHandler),
        (r"/api/locks/([^/]+)/sell", SellHandler),
        (r"/api/orders/([^/]+)", OrderHandler),
        (r"/api/orders/([^/]+)/(refund|void|pickup)", OrderActionHandler),
        (r"/api/reports/daily-sales", DailySalesHandler),
        (r"/_control/?([a-z-]*)", ControlHandler),
    ], system=system, token=token)


def serve(app: Application, port: int) -> None:
    async def main() -> None:
        app.listen(port, "127.0.0.1")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(main())


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stations", required=True, help="comma-separated station codes")
    parser.add_argument("--secret", default=os.environ.get("STATION_SIM_SECRET"),
                        help="token or signing secret (default: $STATION_SIM_SECRET)")
    parser.add_argument("--window-interval", type=float, default=0.0,
                        help="sell one seat at the window every N seconds (0: never)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not args.secret:
        parser.error("--secret or STATION_SIM_SECRET is required")
    return args


def run_simulator(description: str, app_factory: Any) -> None:
    """Parse the command line, build the station system, serve until SIGTERM."""
    args = parse_args(description)
    system = StationSystem(args.stations.split(","), args.seed)
    system.start_window(args.window_interval)
    serve(app_factory(system, args.secret), args.port)


def main() -> None:
    run_simulator(__doc__.splitlines()[0], make_app)


if __name__ == "__main__":
    main()

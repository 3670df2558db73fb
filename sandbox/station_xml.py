"""Simulator of a legacy XML station system: one endpoint, GBK XML, MD5-signed, fen as strings.

    python -m sandbox.station_xml --port 9102 --stations 440507001 --secret S

``POST /service`` takes ``<request><head><op>LOCK_SEAT</op><appId/><timestamp/><nonce/>
<sign/></head><body>…</body></request>`` and answers ``<response>`` with its own status
codes (0000 ok, 1001 bad signature, 2001 seat occupied, …), signed with the same secret.
``/_control`` (JSON, as in the REST simulator) switches faults and drives the window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

from tornado.web import Application, HTTPError

from sandbox.station_core import SimError, StationSystem
from sandbox.station_rest import GRADE_NAMES, ControlHandler, SimHandler, run_simulator
from server.clock import LOCAL_TZ
from server.exchange.adapters import xmlcodec

CODES = {"SEAT_TAKEN": ("2001", "座位已被占用"), "SOLD_OUT": ("2002", "余票不足"),
         "CLOSED": ("2003", "班次已停售"), "NO_LOCK": ("2004", "锁座记录不存在或已过期"),
         "NO_ORDER": ("2005", "订单不存在"), "NO_TRIP": ("2006", "班次不存在"),
         "BAD": ("3001", "参数错误")}
STATE = {"on_sale": "1", "stopped": "2", "cancelled": "3"}


def _fen(value: int) -> str:
    return str(int(value))


class ServiceHandler(SimHandler):
    """The single XML endpoint."""

    async def prepare(self) -> None:
        faults = self.system.faults
        if faults["delay_ms"]:
            await asyncio.sleep(faults["delay_ms"] / 1000)
        if faults["fail"]:
            raise HTTPError(503)

    def answer(self, code: str, msg: str, body: dict[str, Any] | None = None) -> None:
        secret = self.application.settings["token"]
        head = {"code": code, "msg": msg, "timestamp": xmlcodec.local_time(
            dt.datetime.now(dt.UTC)), "nonce": uuid.uuid4().hex[:16]}
        body = body or {}
        head["sign"] = xmlcodec.sign(head, body, secret)
        self.set_header("Content-Type", "text/xml; charset=GBK")
        if self.system.faults["garbage"]:
            self.finish("<response><head><code>0000</code>".encode(xmlcodec.ENCODING))
            return
        self.finish(xmlcodec.encode("response", head, body))

    def post(self) -> None:
        try:
            _, head, body = xmlcodec.decode(self.request.body)
        except xmlcodec.XmlFormatError:
            self.answer("3001", "报文格式错误")
            return
        if not xmlcodec.verify(head, body, self.application.settings["token"]):
            self.answer("1001", "签名错误")
            return
        op = head.get("op", "")
        handler = getattr(self, "op_" + op.lower(), None)
        if handler is None:
            self.answer("3002", f"未知操作 {op}")
            return
        try:
            self.answer("0000", "成功", handler(body))
        except SimError as exc:
            code, msg = CODES[exc.reason]
            self.answer(code, msg)
        except (KeyError, ValueError):
            self.answer("3001", "参数错误")

    def op_ping(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"serverTime": xmlcodec.local_time(dt.datetime.now(dt.UTC))}

    def op_q_station(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"stations": [
            {"zdbm": s["code"], "zdmc": s["name"], "zddj": str(s["grade"]),
             "xzqh": s["division"], "csmc": s["city"], "dz": s["address"],
             "jd": str(s["location"]["coordinates"][0]),
             "wd": str(s["location"]["coordinates"][1])} for s in self.system.stations]}

    def op_q_carrier(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "carriers": [{"qybm": c["code"], "qymc": c["name"], "xzqh": c["division"],
                          "xkzh": c.get("licence_no", "")} for c in self.system.carriers],
            "vehicles": [{"qybm": v["carrier_id"], "cph": v["plate"], "cx": v["model"],
                          "zws": str(v["seats"]), "dj": GRADE_NAMES[v["grade"]]}
                         for v in self.system.vehicles],
            "drivers": [{"qybm": d["carrier_id"], "zgzh": d["licence_no"], "xm": d["name"],
                         "zjcx": d["licence_class"]} for d in self.system.drivers]}

    def op_q_route(self, body: dict[str, Any]) -> dict[str, Any]:
        routes, stops, prices = [], [], []
        for r in self.system.routes:
            routes.append({"xlbm": r["code"], "xlmc": r["name"], "lc": str(r["distance_km"]),
                           "gslc": str(r.get("highway_km", 0)), "qdz": r["origin_station_id"],
                           "zdz": r["destination_station_id"]})
            for s in self.system.stops_of(r["code"]):
                stops.append({"xlbm": r["code"], "xh": str(s["seq"]), "zdbm": s["station_id"],
                              "zdmc": s["name"], "csmc": s["city"], "xzqh": s["division"],
                              "lc": str(s["distance_km"]),
                              "sc": "1" if s["boarding"] else "0",
                              "xc": "1" if s["alighting"] else "0"})
            for f in self.system.fares_of(r["code"]):
                prices.append({"xlbm": r["code"], "qxh": str(f["from_seq"]),
                               "zxh": str(f["to_seq"]), "zdj": _fen(f["guide_price"]),
                               "zwf": _fen(f["station_fee"]),
                               **{f"pj_{k}": _fen(v) for k, v in f["prices"].items()}})
        return {"routes": routes, "stops": stops, "prices": prices}

    def op_q_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"schedules": [
            {"bcbm": s["code"], "xlbm": s["route_id"], "zdbm": s["station_id"],
             "qybm": s["carrier_id"], "fcsj": s["departs_at_local"].replace(":", ""),
             "bcxz": "1" if s["nature"] == "regular" else "2", "bclx": s["type"],
             "zws": str(s["seats"])} for s in self.system.schedules]}

    def op_q_trip(self, body: dict[str, Any]) -> dict[str, Any]:
        since = xmlcodec.parse_local_time(body["since"]) if body.get("since") else None
        return {"serverTime": xmlcodec.local_time(dt.datetime.now(dt.UTC)), "trips": [
            {"fcbh": t.trip_id, "bcbm": t.schedule_code, "xlbm": t.route_code,
             "zdbm": t.station_code, "fcrq": t.service_date.strftime("%Y%m%d"),
             "fcsj": xmlcodec.local_time(t.departs_at), "zws": str(t.seats),
             "zt": STATE[t.status], "gxsj": xmlcodec.local_time(t.updated_at)}
            for t in self.system.trips_since(since)]}

    def op_q_seat(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.system._lock:
            self.system._expire()
            trip = self.system.trip(body["fcbh"])
            return {"fcbh": trip.trip_id, "zws": str(trip.seats), "dsl": str(trip.segments),
                    "zt": STATE[trip.status],
                    "seats": [{"zwh": str(i + 1), "zy": str(m)}
                              for i, m in enumerate(trip.occupancy) if m]}

    def op_lock_seat(self, body: dict[str, Any]) -> dict[str, Any]:
        seats = [int(s) for s in body.get("zwh", "").split(",") if s]
        lock = self.system.lock(body["fcbh"], body["sdh"], int(body.get("sl", "0")), seats,
                                int(body["qxh"]), int(body["zxh"]), int(body.get("sdsc", "600")))
        return {"sdh": lock.lock_id, "zwh": ",".join(str(s) for s in lock.seats),
                "sxsj": xmlcodec.local_time(lock.expires_at)}

    def op_unlock_seat(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"jg": "1" if self.system.unlock(body["sdh"]) else "0"}

    def op_sell(self, body: dict[str, Any]) -> dict[str, Any]:
        order = self.system.sell(body["sdh"], [int(p) for p in body.get("pj", "").split(",")
                                               if p])
        return {"ddh": order.order_id, "tickets": [
            {"zwh": str(s), "ph": order.tickets[s]} for s in order.seats]}

    def op_q_order(self, body: dict[str, Any]) -> dict[str, Any]:
        order_id = body["ddh"]
        if order_id in self.system.locks:
            lock = self.system.locks[order_id]
            return {"ddh": order_id, "zt": "LOCKED", "zwh": ",".join(map(str, lock.seats))}
        order = self.system.order(order_id)
        active = [s for s in order.seats if s not in order.returned]
        return {"ddh": order_id, "zt": order.status.upper(), "zwh": ",".join(map(str, active))}

    def op_refund(self, body: dict[str, Any]) -> dict[str, Any]:
        seats = [int(s) for s in body.get("zwh", "").split(",") if s]
        return {"zwh": ",".join(map(str, self.system.return_seats(body["ddh"], seats,
                                                               "refunded")))}

    def op_void(self, body: dict[str, Any]) -> dict[str, Any]:
        seats = [int(s) for s in body.get("zwh", "").split(",") if s]
        return {"zwh": ",".join(map(str, self.system.return_seats(body["ddh"], seats,
                                                               "voided")))}

    def op_q_daily_sales(self, body: dict[str, Any]) -> dict[str, Any]:
        """日售票明细 of a day (``rq`` YYYYMMDD): lx 1 售 / 2 退, qd 1 网络 / 2 窗口."""
        day = dt.datetime.strptime(body["rq"], "%Y%m%d").date()
        lines = self.system.daily_sales(day, LOCAL_TZ)
        return {"rq": body["rq"], "bs": str(len(lines)), "sales": [
            {"ddh": ln["order_id"], "zwh": str(ln["seat"]), "ph": ln["ticket_no"],
             "pj": _fen(ln["price"]), "lx": "1" if ln["event"] == "SALE" else "2",
             "qd": "2" if ln["window"] else "1", "sj": xmlcodec.local_time(ln["at"])}
            for ln in lines]}

    def op_pickup(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"ph": self.system.pickup(body["ddh"], int(body["zwh"]))}


def make_app(system: StationSystem, secret: str) -> Application:
    return Application([(r"/service", ServiceHandler),
                        (r"/_control/?([a-z-]*)", ControlHandler)], system=system, token=secret)


def main() -> None:
    run_simulator(__doc__.splitlines()[0], make_app)


if __name__ == "__main__":
    main()

"""What every station-system simulator shares: its own data, its own seats, its own window.

A simulator owns the stations it is given: their routes, schedules, fares and dated trips
come from the demo province generator (so they agree with the platform's registry), but the
seats are the simulator's alone — it sells at its own window on a timer, and the platform
must live with seats vanishing under it. Fault modes (slow, failing, garbage) are switched
over a control endpoint by tests.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from devstack import demo
from server.services.planning import departs_at, local_today

PLAN_DAYS = 10


class SimError(Exception):
    """A refusal in the simulator's own words (the adapters translate)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason  # SEAT_TAKEN, SOLD_OUT, CLOSED, NO_LOCK, NO_ORDER, NO_TRIP, BAD
        self.detail = detail


def mask(from_seq: int, to_seq: int) -> int:
    return ((1 << to_seq) - 1) & ~((1 << from_seq) - 1)


@dataclass
class Trip:
    trip_id: str
    schedule_code: str
    route_code: str
    station_code: str
    service_date: dt.date
    departs_at: dt.datetime
    seats: int
    segments: int
    status: str = "on_sale"
    occupancy: list[int] = field(default_factory=list)
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def free(self, m: int) -> list[int]:
        return [i + 1 for i, o in enumerate(self.occupancy) if o & m == 0]


@dataclass
class Lock:
    lock_id: str
    trip_id: str
    seats: list[int]
    from_seq: int
    to_seq: int
    expires_at: dt.datetime


@dataclass
class Order:
    order_id: str
    trip_id: str
    seats: list[int]
    from_seq: int
    to_seq: int
    tickets: dict[int, str]
    status: str = "sold"  # sold, refunded, voided
    returned: list[int] = field(default_factory=list)
    picked_up: list[int] = field(default_factory=list)
    prices: dict[int, int] = field(default_factory=dict)  # fen, by seat
    sold_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    returned_at: dict[int, dt.datetime] = field(default_factory=dict)
    window: bool = False  # sold at the station's own window, not through the network


class StationSystem:
    """One vendor system serving a few stations (thread-safe: the window timer is a thread)."""

    def __init__(self, station_codes: list[str], seed: int = 1) -> None:
        self._lock = threading.RLock()
        self.rng = random.Random(seed)
        data = demo.generate()
        codes = set(station_codes)
        self.stations = [s for s in data["stations"] if s["code"] in codes]
        self.routes = [r for r in data["routes"] if r["origin_station_id"] in codes]
        route_ids = {r["_id"] for r in self.routes}
        self.stops = [s for s in data["stops"] if s["route_id"] in route_ids]
        self.fares = [f for f in data["fares"] if f["route_id"] in route_ids]
        self.schedules = [s for s in data["schedules"] if s["route_id"] in route_ids]
        used = {s["carrier_id"] for s in self.schedules}
        self.carriers = [c for c in data["carriers"] if c["_id"] in used]
        self.vehicles = [v for v in data["vehicles"] if v["carrier_id"] in used]
        self.drivers = [d for d in data["drivers"] if d["carrier_id"] in used]
        self.trips: dict[str, Trip] = {}
        self.locks: dict[str, Lock] = {}
        self.orders: dict[str, Order] = {}
        self.ticket_serial = 0
        self.window_sales = 0
        self.faults: dict[str, Any] = {"delay_ms": 0, "fail": False, "garbage": False}
        segments = {r["_id"]: sum(1 for s in self.stops if s["route_id"] == r["_id"]) - 1
                    for r in self.routes}
        today = local_today()
        for sch in self.schedules:
            for offset in range(PLAN_DAYS):
                day = today + dt.timedelta(days=offset)
                trip_id = f"T{sch['code'][1:]}{day:%Y%m%d}"
                self.trips[trip_id] = Trip(
                    trip_id, sch["code"], sch["route_id"], sch["station_id"], day,
                    departs_at(day, sch["departs_at_local"]), sch["seats"],
                    segments[sch["route_id"]], occupancy=[0] * sch["seats"])

    # --- data ---------------------------------------------------------------------------
    def trips_since(self, since: dt.datetime | None) -> list[Trip]:
        with self._lock:
            return [t for t in self.trips.values() if since is None or t.updated_at > since]

    def trip(self, trip_id: str) -> Trip:
        try:
            return self.trips[trip_id]
        except KeyError:
            raise SimError("NO_TRIP", trip_id) from None

    def set_status(self, trip_id: str, status: str) -> None:
        with self._lock:
            trip = self.trip(trip_id)
            trip.status = status
            trip.updated_at = dt.datetime.now(dt.UTC)

    def change_price(self, route_code: str, adult: int) -> None:
        """The station changes a fare (tests watch sync detect it)."""
        with self._lock:
            for fare in self.fares:
                if fare["route_id"] == route_code:
                    ratio = adult / fare["prices"]["adult"]
                    fare["prices"] = {k: int(v * ratio) // 50 * 50
                                      for k, v in fare["prices"].items()}
            for trip in self.trips.values():
                if trip.route_code == route_code:
                    trip.updated_at = dt.datetime.now(dt.UTC)

    # --- seats --------------------------------------------------------------------------
    def _expire(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for lock in [lk for lk in self.locks.values() if lk.expires_at <= now]:
            trip = self.trips[lock.trip_id]
            for s in lock.seats:
                trip.occupancy[s - 1] &= ~mask(lock.from_seq, lock.to_seq)
            del self.locks[lock.lock_id]

    def lock(self, trip_id: str, lock_id: str, count: int, seats: list[int], from_seq: int,
             to_seq: int, ttl: int) -> Lock:
        with self._lock:
            self._expire()
            if lock_id in self.locks:
                return self.locks[lock_id]
            trip = self.trip(trip_id)
            if trip.status != "on_sale":
                raise SimError("CLOSED", trip.status)
            if not 0 <= from_seq < to_seq <= trip.segments:
                raise SimError("BAD", "segment")
            m = mask(from_seq, to_seq)
            free = trip.free(m)
            if seats:
                for s in seats:
                    if s < 1 or s > trip.seats:
                        raise SimError("BAD", f"seat {s}")
                    if s not in free:
                        raise SimError("SEAT_TAKEN", str(s))
                chosen = list(seats)
            else:
                if len(free) < count:
                    raise SimError("SOLD_OUT", str(len(free)))
                chosen = free[:count]
            for s in chosen:
                trip.occupancy[s - 1] |= m
            lock = Lock(lock_id, trip_id, chosen, from_seq, to_seq,
                        dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl))
            self.locks[lock_id] = lock
            return lock

    def unlock(self, lock_id: str) -> bool:
        with self._lock:
            lock = self.locks.pop(lock_id, None)
            if lock is None:
                return False
            trip = self.trips[lock.trip_id]
            for s in lock.seats:
                trip.occupancy[s - 1] &= ~mask(lock.from_seq, lock.to_seq)
            return True

    def sell(self, lock_id: str, prices: list[int] | None = None) -> Order:
        """A lock becomes an order; ``prices`` are the tickets' fen in seat order (the
        platform says what it charged; the daily sales report repeats it)."""
        with self._lock:
            if lock_id in self.orders:
                return self.orders[lock_id]
            self._expire()
            lock = self.locks.pop(lock_id, None)
            if lock is None:
                raise SimError("NO_LOCK", lock_id)
            tickets = {}
            for s in lock.seats:
                self.ticket_serial += 1
                tickets[s] = f"{self.trips[lock.trip_id].station_code}{self.ticket_serial:08d}"
            order = Order(lock_id, lock.trip_id, lock.seats, lock.from_seq, lock.to_seq,
                          tickets, prices=dict(zip(lock.seats, prices or [], strict=False)))
            self.orders[lock_id] = order
            return order

    def order(self, order_id: str) -> Order:
        try:
            return self.orders[order_id]
        except KeyError:
            raise SimError("NO_ORDER", order_id) from None

    def return_seats(self, order_id: str, seats: list[int], status: str) -> list[int]:
        with self._lock:
            order = self.order(order_id)
            trip = self.trips[order.trip_id]
            freed = [s for s in seats if s in order.seats and s not in order.returned]
            for s in freed:
                trip.occupancy[s - 1] &= ~mask(order.from_seq, order.to_seq)
                order.returned.append(s)
                order.returned_at[s] = dt.datetime.now(dt.UTC)
            if set(order.returned) == set(order.seats):
                order.status = status
            return freed

    def pickup(self, order_id: str, seat: int) -> str:
        with self._lock:
            order = self.order(order_id)
            if seat not in order.seats or seat in order.returned:
                raise SimError("NO_ORDER", f"seat {seat}")
            if seat not in order.picked_up:
                order.picked_up.append(seat)
            return order.tickets[seat]

    def window_sale(self, trip_id: str | None = None, seat: int | None = None) -> str | None:
        """A passenger buys a whole-route seat at the station's own window."""
        with self._lock:
            self._expire()
            now = dt.datetime.now(dt.UTC)
            open_trips = [t for t in self.trips.values()
                          if t.status == "on_sale" and t.departs_at > now
                          and t.free(mask(0, t.segments))
                          and (trip_id is None or t.trip_id == trip_id)]
            if not open_trips:
                return None
            trip = self.rng.choice(open_trips)
            free = trip.free(mask(0, trip.segments))
            if seat is not None and seat not in free:
                return None
            seat = seat if seat is not None else self.rng.choice(free)
            trip.occupancy[seat - 1] |= mask(0, trip.segments)
            self.window_sales += 1
            order_id = "W" + uuid.uuid4().hex[:12]
            fare = next((f for f in self.fares_of(trip.route_code)
                         if f["from_seq"] == 0 and f["to_seq"] == trip.segments), None)
            self.orders[order_id] = Order(order_id, trip.trip_id, [seat], 0, trip.segments,
                                          {seat: f"{trip.station_code}W{self.window_sales:07d}"},
                                          prices={seat: fare["prices"]["adult"] if fare else 0},
                                          window=True)
            return trip.trip_id

    def age(self, order_id: str, days: int) -> None:
        """Tests: an order sold (and its seats given back) ``days`` earlier."""
        with self._lock:
            order = self.order(order_id)
            back = dt.timedelta(days=days)
            order.sold_at -= back
            order.returned_at = {s: t - back for s, t in order.returned_at.items()}

    def daily_sales(self, day: dt.date, tz: dt.tzinfo) -> list[dict[str, Any]]:
        """日售票明细: every ticket sold or given back on a local day — a SALE line per seat
        sold, a RETURN line per seat refunded or voided — window sales marked as such."""
        lines = []
        with self._lock:
            for order in self.orders.values():
                for seat in order.seats:
                    base = {"order_id": order.order_id, "seat": seat,
                            "ticket_no": order.tickets[seat],
                            "price": order.prices.get(seat, 0), "window": order.window}
                    if order.sold_at.astimezone(tz).date() == day:
                        lines.append({**base, "event": "SALE", "at": order.sold_at})
                    back = order.returned_at.get(seat)
                    if back is not None and back.astimezone(tz).date() == day:
                        lines.append({**base, "event": "RETURN", "at": back,
                                      "state": order.status})
        return lines

    def start_window(self, interval: float) -> None:
        """Sell at the window every ``interval`` seconds, in a daemon thread."""
        if interval <= 0:
            return

        def loop() -> None:
            event = threading.Event()
            while not event.wait(interval):
                self.window_sale()

        threading.Thread(target=loop, daemon=True, name="window").start()

    def fares_of(self, route_code: str) -> list[dict[str, Any]]:
        return [f for f in self.fares if f["route_id"] == route_code]

    def stops_of(self, route_code: str) -> list[dict[str, Any]]:
        return sorted((s for s in self.stops if s["route_id"] == route_code),
                      key=lambda s: s["seq"])

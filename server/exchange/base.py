"""The normalized station interface and the values that cross it.

The guideline's eight ticket-service interfaces (remaining seats, lock seat, unlock seat,
sell, order query, refund, void, pickup) plus data sync and a health probe. Every part of
Keyun reaches a station only through a :class:`StationExchange`; each adapter translates
one vendor's dialect and maps its failures onto ``server.exchange.errors``.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DepartureRef:
    """Which departure a call is about: our id, its station, and the vendor's own id."""

    id: str
    station_id: str
    vendor_ref: str
    seats: int
    segments: int  # number of stops on the route minus one

    @classmethod
    def from_doc(cls, doc: dict[str, Any], segments: int) -> DepartureRef:
        return cls(id=doc["_id"], station_id=doc["station_id"],
                   vendor_ref=doc.get("vendor_ref") or doc["_id"], seats=doc["seats"],
                   segments=segments)


@dataclass(frozen=True)
class HoldRequest:
    """Hold ``count`` seats (or exactly ``seats``) from stop ``from_seq`` to ``to_seq``."""

    hold_id: str
    channel: str
    count: int
    from_seq: int
    to_seq: int
    seats: tuple[int, ...] = ()
    ttl_seconds: int = 900
    limited: bool = True  # the channel's allotments and caps apply (not at the window)


@dataclass(frozen=True)
class Hold:
    hold_id: str
    departure_id: str
    seats: tuple[int, ...]
    from_seq: int
    to_seq: int
    expires_at: dt.datetime
    vendor_ref: str = ""


@dataclass(frozen=True)
class TicketInfo:
    """What a station needs to issue one ticket (names only; ID numbers stay with us)."""

    seat: int
    passenger_name: str
    ticket_type: str
    price: int  # fen


@dataclass(frozen=True)
class Sale:
    sale_id: str
    departure_id: str
    seats: tuple[int, ...]
    station_ticket_nos: tuple[str, ...] = ()


@dataclass(frozen=True)
class SaleStatus:
    sale_id: str
    status: str  # held, sold, returned, released, unknown
    seats: tuple[int, ...] = ()


@dataclass(frozen=True)
class SaleLine:
    """One line of a station's daily sales detail (日售票明细): a seat sold or given back."""

    sale_id: str
    seat: int
    station_ticket_no: str
    price: int  # fen
    event: str  # "sale" or "return"
    at: dt.datetime
    window: bool = False  # the station's own window sold it, not the network


@dataclass(frozen=True)
class Availability:
    """Remaining seats of a departure, per segment, and the seat map."""

    departure_id: str
    seats: int
    segments: int
    status: str
    remaining: int  # for the whole route
    occupancy: tuple[int, ...] = ()  # per seat, bit i set = segment i taken
    held: tuple[int, ...] = ()
    version: int = 0
    as_of: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def remaining_between(self, from_seq: int, to_seq: int) -> int:
        """Seats free on every segment from stop ``from_seq`` to stop ``to_seq``."""
        if not self.occupancy:
            return self.remaining
        mask = segment_mask(from_seq, to_seq)
        return sum(1 for m in self.occupancy if m & mask == 0)


@dataclass(frozen=True)
class Health:
    ok: bool
    latency_ms: float
    detail: str = ""


@dataclass
class SyncBatch:
    """Normalized data pulled from a station: documents keyed like our collections."""

    stations: list[dict[str, Any]] = field(default_factory=list)
    carriers: list[dict[str, Any]] = field(default_factory=list)
    vehicles: list[dict[str, Any]] = field(default_factory=list)
    drivers: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    stops: list[dict[str, Any]] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    departures: list[dict[str, Any]] = field(default_factory=list)
    fares: list[dict[str, Any]] = field(default_factory=list)
    cursor: str = ""  # what to pass as ``since`` next time


# Vehicle grades (营运客车类型等级) as station systems name them, and ours.
VEHICLE_GRADES = {"高一级": "high_1", "高二级": "high_2", "高三级": "high_3", "中级": "mid",
                  "普通级": "normal"}


def segment_mask(from_seq: int, to_seq: int) -> int:
    """Bits of the segments a journey from stop ``from_seq`` to stop ``to_seq`` occupies."""
    return ((1 << to_seq) - 1) & ~((1 << from_seq) - 1)


class StationExchange(abc.ABC):
    """One station system, whatever its vendor. Implementations must be safe to retry:
    a hold with a known ``hold_id``, a sell of a sold hold, a release of a released hold
    all answer as the first call did."""

    identifier: str = ""

    @abc.abstractmethod
    async def health(self) -> Health:
        """Probe the station system."""

    @abc.abstractmethod
    async def remaining(self, departure: DepartureRef) -> Availability:
        """余票查询: remaining seats and seat map."""

    @abc.abstractmethod
    async def hold(self, departure: DepartureRef, request: HoldRequest) -> Hold:
        """锁座: hold seats until ``ttl_seconds`` pass (SeatTaken, SoldOut, …)."""

    @abc.abstractmethod
    async def release(self, departure: DepartureRef, hold_id: str) -> bool:
        """解锁: give held seats back; False if the hold was already gone."""

    @abc.abstractmethod
    async def sell(self, departure: DepartureRef, hold_id: str,
                   tickets: list[TicketInfo]) -> Sale:
        """售票: turn a hold into sold seats (HoldExpired if it ran out)."""

    @abc.abstractmethod
    async def query(self, departure: DepartureRef, sale_id: str) -> SaleStatus:
        """订单查询: what the station knows of a hold or sale."""

    @abc.abstractmethod
    async def refund(self, departure: DepartureRef, sale_id: str,
                     seats: tuple[int, ...]) -> tuple[int, ...]:
        """退票: give sold seats back to sale; returns the seats returned."""

    @abc.abstractmethod
    async def void(self, departure: DepartureRef, sale_id: str,
                   seats: tuple[int, ...]) -> tuple[int, ...]:
        """废票: cancel misissued tickets; the seats go back on sale."""

    @abc.abstractmethod
    async def pickup(self, departure: DepartureRef, sale_id: str, seat: int) -> str:
        """取票: record that a paper ticket was printed; returns the station's ticket no."""

    async def daily_sales(self, day: dt.date) -> list[SaleLine]:
        """日售票明细: the seats sold and given back on a local day, for reconciliation.
        A station system without the report refuses (``StationUnsupported``)."""
        from server.exchange.errors import StationUnsupported

        raise StationUnsupported(detail=f"{self.identifier} has no daily sales report")

    @abc.abstractmethod
    async def pull(self, since: str | None = None) -> SyncBatch:
        """Data sync: everything (``since`` None) or what changed since a cursor."""

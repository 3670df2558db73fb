"""Normalized station errors: each failure its own type, each type one stable API code."""

from __future__ import annotations

from typing import Any

from server.errors import DomainError


class ExchangeError(DomainError):
    """Base of every station error; subclasses fix the code."""

    code_name = "STATION_BAD_RESPONSE"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(self.code_name, message, **details)


class SeatTaken(ExchangeError):
    code_name = "SEAT_TAKEN"


class SoldOut(ExchangeError):
    code_name = "SOLD_OUT"


class AllotmentExhausted(ExchangeError):
    code_name = "ALLOTMENT_EXHAUSTED"


class QuotaExceeded(ExchangeError):
    code_name = "QUOTA_EXCEEDED"


class ChannelNotAllowed(ExchangeError):
    code_name = "CHANNEL_NOT_ALLOWED"


class DepartureStopped(ExchangeError):
    code_name = "DEPARTURE_STOPPED"


class DepartureNotFound(ExchangeError):
    code_name = "DEPARTURE_NOT_FOUND"


class InvalidSegment(ExchangeError):
    code_name = "INVALID_SEGMENT"


class NoSuchSeat(ExchangeError):
    code_name = "NO_SUCH_SEAT"


class HoldNotFound(ExchangeError):
    code_name = "HOLD_NOT_FOUND"


class HoldExpired(ExchangeError):
    code_name = "HOLD_EXPIRED"


class SaleNotFound(ExchangeError):
    code_name = "SALE_NOT_FOUND"


class StationUnreachable(ExchangeError):
    code_name = "STATION_UNAVAILABLE"


class StationTimeout(ExchangeError):
    code_name = "STATION_TIMEOUT"


class BadStationResponse(ExchangeError):
    code_name = "STATION_BAD_RESPONSE"


class StationUnsupported(ExchangeError):
    code_name = "STATION_UNSUPPORTED"


# the inventory scripts' reasons (and the vendors' normalized ones) -> error types
BY_REASON: dict[str, type[ExchangeError]] = {
    "SEAT_TAKEN": SeatTaken, "SOLD_OUT": SoldOut, "ALLOTMENT_EXHAUSTED": AllotmentExhausted,
    "QUOTA_EXCEEDED": QuotaExceeded, "CHANNEL_NOT_ALLOWED": ChannelNotAllowed,
    "DEPARTURE_STOPPED": DepartureStopped, "BAD_SEGMENT": InvalidSegment,
    "NO_SUCH_SEAT": NoSuchSeat, "HOLD_NOT_FOUND": HoldNotFound, "HOLD_EXPIRED": HoldExpired,
    "DEPARTURE_NOT_FOUND": DepartureNotFound, "SALE_NOT_FOUND": SaleNotFound,
}

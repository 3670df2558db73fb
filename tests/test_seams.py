"""Each seam's in-memory implementation, in pure units (no servers): the payment provider
contract, how a notice finds its way to the passenger, the station exchange contract.
The integration tests run the same seams against the HTTP sandboxes and simulators."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from devstack.demo import DEMO_VENDORS
from notify.dispatch import Senders
from notify.memory import MemorySms, MemorySubscribe
from payments.base import Attempt, NotificationRejected, PaymentError, ProviderRegistry
from payments.memory import MemoryProvider
from payments.statements import match
from sandbox.memory_exchange import MemoryExchange
from sandbox.station_core import StationSystem
from server.exchange import errors
from server.exchange.base import DepartureRef, HoldRequest, TicketInfo


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- payments ---------------------------------------------------------------------------------
def test_a_payment_is_paid_once_refunded_once_and_on_the_statement() -> None:
    provider = MemoryProvider()
    registry = ProviderRegistry()
    registry.register(provider)
    assert registry.for_method("memory") is provider and registry.for_method("cash") is None
    attempt = Attempt("KY1P01", "KY1", 3000, "客运车票 KY1")
    run(provider.start(attempt, "memory"))
    assert run(provider.query("KY1P01")).state == "pending"
    headers, body = provider.pay("KY1P01")
    state = run(provider.parse_notification(headers, body))
    assert (state.state, state.amount) == ("paid", 3000)
    with pytest.raises(NotificationRejected):  # a forged copy
        run(provider.parse_notification({"Signature": "0" * 64}, body))
    with pytest.raises(PaymentError):  # a close loses to the payment
        run(provider.close("KY1P01"))
    first = run(provider.refund("KY1P01", "RF1", 1000, 3000))
    again = run(provider.refund("KY1P01", "RF1", 1000, 3000))
    assert first == again and provider.transactions["KY1P01"].refunded == 1000
    with pytest.raises(PaymentError):  # never more back than was paid
        run(provider.refund("KY1P01", "RF2", 2500, 3000))
    lines = run(provider.statement("2026-11-27"))
    assert match(lines, [{"out_trade_no": "KY1P01", "amount": 3000}]).clean
    assert not match(lines, [{"out_trade_no": "KY1P01", "amount": 2999}]).clean


# --- notices ----------------------------------------------------------------------------------
VALUES = {"order_no": "KY1", "route": "广州-深圳", "departs_at": "2026-12-01 08:00",
          "tickets": "2"}


def test_a_notice_goes_by_wechat_when_accepted_else_by_sms() -> None:
    sms, wechat = MemorySms(), MemorySubscribe()
    senders = Senders(sms, wechat, {"ticket_issued": "TPL1"})
    wechat.accepted.add("o-yes")
    sent, errors_ = run(senders.send("ticket_issued", VALUES, "KY1", openid="o-yes",
                                     phone="13812345678", out_id="n1"))
    assert sent == ("wechat", "msg1") and not errors_ and not sms.sent
    assert wechat.sent[0]["data"]["character_string1"] == {"value": "KY1"}
    # the passenger did not accept the template: an SMS instead, the refusal noted
    sent, errors_ = run(senders.send("ticket_issued", VALUES, "KY1", openid="o-no",
                                     phone="13812345678", out_id="n2"))
    assert sent == ("sms", "sms1") and errors_ == ["wechat 43101"]
    # sent again under the same id (a retry after a crash): the gateway does not resend
    run(senders.send("ticket_issued", VALUES, "KY1", openid="", phone="13812345678",
                     out_id="n2"))
    assert len(sms.sent) == 1
    sms.failing = True
    sent, errors_ = run(senders.send("ticket_issued", VALUES, "KY1", openid="",
                                     phone="13812345678", out_id="n3"))
    assert sent is None and errors_ == ["sms gateway down"]
    sent, errors_ = run(senders.send("refund_done", VALUES, "KY1", openid="o-yes", phone="",
                                     out_id="n4"))
    assert sent is None and errors_ == ["no phone"]  # no template for it, and no phone


# --- the station exchange ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def station() -> tuple[MemoryExchange, DepartureRef]:
    code = next(c for c, v in DEMO_VENDORS.items() if v == "rest")
    exchange = MemoryExchange(StationSystem([code]))
    trip = next(t for t in exchange.system.trips.values() if t.segments >= 2)
    return exchange, DepartureRef(f"{trip.schedule_code}-x", code, trip.trip_id, trip.seats,
                                  trip.segments)


def test_the_exchange_contract_holds_sells_and_returns_once(station) -> None:
    exchange, dep = station
    before = run(exchange.remaining(dep)).remaining
    request = HoldRequest("H1", "web", 2, 0, dep.segments, ttl_seconds=60)
    hold = run(exchange.hold(dep, request))
    assert run(exchange.hold(dep, request)) == hold  # a retried hold: the same seats
    assert run(exchange.remaining(dep)).remaining == before - 2
    with pytest.raises(errors.SeatTaken):
        run(exchange.hold(dep, HoldRequest("H2", "web", 1, 0, 1, seats=(hold.seats[0],))))
    infos = [TicketInfo(s, "张三", "adult", 1000) for s in hold.seats]
    sale = run(exchange.sell(dep, "H1", infos))
    assert run(exchange.sell(dep, "H1", infos)) == sale  # sold once
    assert run(exchange.query(dep, "H1")).status == "sold"
    assert run(exchange.refund(dep, sale.sale_id, (hold.seats[0],))) == (hold.seats[0],)
    assert run(exchange.refund(dep, sale.sale_id, (hold.seats[0],))) == ()  # returned once
    assert run(exchange.remaining(dep)).remaining == before - 1
    assert run(exchange.void(dep, sale.sale_id, (hold.seats[1],))) == (hold.seats[1],)
    assert run(exchange.query(dep, "H1")).status == "returned"
    held = run(exchange.hold(dep, HoldRequest("H3", "web", 1, 0, 1)))
    assert run(exchange.release(dep, "H3")) and not run(exchange.release(dep, "H3"))
    with pytest.raises(errors.HoldExpired):  # a released hold cannot be sold
        run(exchange.sell(dep, "H3", [TicketInfo(held.seats[0], "李四", "adult", 1000)]))
    assert run(exchange.remaining(dep)).remaining == before


def test_the_exchange_pulls_base_data_then_changes(station) -> None:
    exchange, _ = station
    first = run(exchange.pull())
    assert first.stations and first.routes and first.fares and first.departures
    assert {d["status"] for d in first.departures} <= {"on_sale", "stopped", "cancelled"}
    later = run(exchange.pull(first.cursor))
    assert not later.routes and not later.departures  # nothing changed since

"""Rules as managed data over real HTTP (issue 14, item 5): versions effective from their time
only, scoped to a route or station (the most specific says last), recorded on every order,
named with their tier on every refund quote; nonsense refused; a draft replayed against
real past refunds."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from server.clock import local_today
from tests.booking_support import app_member, issued_order, person
from tests.support import ApiClient
from tests.test_basedata import _network

RULES = "/api/v1/admin/rules"


def _day(offset: int) -> str:
    return (local_today() + dt.timedelta(days=offset)).strftime("%Y%m%d")


@pytest.mark.gen_test(timeout=180)
async def test_a_route_rule_changes_quotes_from_its_time_only(api: ApiClient, db,
                                                             services) -> None:
    operator = (await api.login("operator"))["token"]
    made, other = await _network(api, operator), await _network(api, operator)
    dep, elsewhere = f"{made['schedule']}-{_day(2)}", f"{other['schedule']}-{_day(2)}"
    token = await app_member(api)
    mine = await issued_order(api, services, token, dep, [person()])
    theirs = await issued_order(api, services, token, elsewhere, [person()])
    ticket, their_ticket = mine["tickets"][0], theirs["tickets"][0]
    quote_path = f"/api/v1/tickets/{ticket['ticket_no']}/refund-quote"
    before = (await api.get(quote_path, token=token)).body
    assert before["fee"] == ticket["price"] // 10  # the default: 10 % two hours out

    starts = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    published = await api.post(RULES, {
        "effective_from": starts.isoformat(), "scope": {"level": "route", "ref": made["route"]},
        "note": "春运退票新规", "refund_tiers": [
            {"hours_before": 12, "rate_bp": 2500, "min_fee": 100},
            {"hours_before": 0, "rate_bp": 5000, "min_fee": 100}]}, token=operator)
    assert published.status == 201, published.text
    version = published.body["id"]
    assert published.body["state"] == "scheduled"
    # not yet in force: the quote is as it was
    assert (await api.get(quote_path, token=token)).body["fee"] == before["fee"]
    await asyncio.sleep(max(0.0, (starts - dt.datetime.now(dt.UTC)).total_seconds()) + 0.3)
    after = (await api.get(quote_path, token=token)).body
    assert after["fee"] == ticket["price"] // 4, after
    assert after["rules_version"].endswith(version)
    assert after["tier"] == {"hours_before": 12, "rate_bp": 2500, "min_fee": 100}
    assert "12" in after["explanation"] and "25%" in after["explanation"]
    # another route keeps the province's rules
    theirs_quote = (await api.get(f"/api/v1/tickets/{their_ticket['ticket_no']}/refund-quote",
                                  token=token)).body
    assert theirs_quote["fee"] == their_ticket["price"] // 10
    # an order sold now records the version it was sold under
    later = await api.post("/api/v1/orders", {"departure_id": dep, "contact_phone":
                                              "13812345678", "passengers": [person()]},
                           token=token)
    assert later.status == 201, later.text
    stored = await db.orders.find_one({"order_no": later.body["order_no"]})
    assert version in stored["rules_version"]
    listing = (await api.get(RULES, token=operator)).body
    assert next(v for v in listing["versions"] if v["id"] == version)["state"] == "in_force"

    # the refund follows the quote, and a dry run of a dearer draft sees it
    refunded = await api.post(f"/api/v1/tickets/{ticket['ticket_no']}/refund", {},
                              token=token)
    assert refunded.status == 200, refunded.text
    dry = await api.post(f"{RULES}/dry-run", {
        "scope": {"level": "route", "ref": made["route"]},
        "refund_tiers": [{"hours_before": 0, "rate_bp": 8000, "min_fee": 0}]}, token=operator)
    assert dry.status == 200, dry.text
    assert dry.body["refunds"] == 1 and dry.body["fees_changed"] == 1
    assert dry.body["changes"] == [{"ticket_no": ticket["ticket_no"],
                                    "fee_before": ticket["price"] // 4,
                                    "fee_after": ticket["price"] * 8 // 10}]
    assert dry.body["orders"] >= 2 and dry.body["orders_refused"] == 0
    assert await db.rules.count_documents({}) == len(listing["versions"])  # wrote nothing


@pytest.mark.gen_test(timeout=120)
async def test_a_station_rule_limits_its_orders_and_nonsense_is_refused(api: ApiClient,
                                                                       db) -> None:
    operator = (await api.login("operator"))["token"]
    made = await _network(api, operator)
    dep = f"{made['schedule']}-{_day(3)}"
    published = await api.post(RULES, {"scope": {"level": "station", "ref": made["station"]},
                                       "max_passengers": 2}, token=operator)
    assert published.status == 201 and published.body["state"] == "in_force", published.text
    token = await app_member(api)
    three = [person("甲"), person("乙"), person("丙")]
    refused = await api.post("/api/v1/orders", {"departure_id": dep, "contact_phone":
                                                "13812345678", "passengers": three},
                             token=token)
    assert refused.status == 422 and refused.error_code == "TOO_MANY_PASSENGERS_IN_ORDER"
    assert refused.body["error"]["limit"] == 2
    two = await api.post("/api/v1/orders", {"departure_id": dep, "contact_phone":
                                            "13812345678", "passengers": three[:2]},
                         token=token)
    assert two.status == 201, two.text

    count = await db.rules.count_documents({})

    async def bad(body: dict, status: int, code: str) -> None:
        resp = await api.post(RULES, body, token=operator)
        assert (resp.status, resp.error_code) == (status, code), resp.text

    await bad({"refund_tiers": [{"hours_before": 2, "rate_bp": 1000, "min_fee": 0},
                                {"hours_before": 2, "rate_bp": 2000, "min_fee": 0}]},
              422, "RULE_INVALID")  # two tiers at one time: they overlap
    await bad({"refund_tiers": [{"hours_before": 0, "rate_bp": 15000, "min_fee": 0}]},
              422, "RULE_INVALID")  # a fee above the price
    await bad({"refund_tiers": [{"hours_before": 24, "rate_bp": 3000, "min_fee": 0},
                                {"hours_before": 0, "rate_bp": 1000, "min_fee": 0}]},
              422, "RULE_INVALID")  # cheaper nearer departure
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    await bad({"effective_from": past, "sale_days": 5}, 422, "RULE_EFFECTIVE_IN_PAST")
    await bad({"scope": {"level": "route", "ref": "NO-SUCH-ROUTE"}, "sale_days": 5},
              422, "REFERENCE_NOT_FOUND")
    await bad({"note": "nothing set"}, 422, "RULE_INVALID")
    await bad({"sale_days": 0}, 400, "INVALID_VALUE")
    assert await db.rules.count_documents({}) == count


@pytest.mark.gen_test
async def test_the_province_rules_now_change_when_a_scheduled_version_starts(db) -> None:
    """The province's rules in force are kept between searches, but not past the time a
    scheduled version takes effect, nor once the versions change (the versions given here
    in place of the stored ones)."""
    from server.services.rules import RuleService

    now = dt.datetime.now(dt.UTC)
    versions = [{"_id": "old", "effective_from": now - dt.timedelta(days=1),
                 "rules": {"sale_days": 10}},
                {"_id": "soon", "effective_from": now + dt.timedelta(seconds=0.5),
                 "rules": {"sale_days": 5}}]
    held = [versions]
    rules = RuleService(db)

    async def listed() -> list[dict[str, Any]]:
        return held[0]

    rules.versions = listed  # type: ignore[method-assign]
    assert (await rules.current()).sale_days == 10
    assert (await rules.current()).sale_days == 10
    assert (await rules.current(now + dt.timedelta(seconds=1))).sale_days == 5
    await asyncio.sleep(0.6)
    assert (await rules.current()).sale_days == 5
    newer = {"_id": "newer", "effective_from": now, "rules": {"sale_days": 3}}
    held[0] = [versions[0], newer, versions[1]]  # as stored: oldest effective first
    assert (await rules.current()).sale_days == 5  # "soon" took effect after "newer"
    held[0] = [versions[0], newer]
    assert (await rules.current()).sale_days == 3

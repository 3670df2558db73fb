"""Clearing and settlement: every ticket's money shared out by the clearing rules into a
double-entry ledger that always balances; settlement T+N in batches that run once, with
statements whose totals are the ledger's; reconciliation of the providers' bills (payments
and refunds) with every planted difference found and none invented."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import random
import secrets
from typing import Any
from urllib.parse import quote

import pytest
from openpyxl import load_workbook
from tornado.httpclient import AsyncHTTPClient

from server.clock import LOCAL_TZ, local_today
from server.errors import DomainError
from server.exchange.adapters.xml import XmlExchange
from server.services.clearing import DEFAULT, Sale, check, split_fee, split_sale
from tests.booking_support import native_departure, person
from tests.reliability import record
from tests.support import ApiClient
from tests.test_exchange import control, pick
from tests.test_payments import (
    pending_payment,
    sandbox,
    wait_refund,
    wait_status,
    wechat_member,
)


# --- the clearing rules: pure -------------------------------------------------------------------
def _sale(price: int, fee: int, seller: str | None = "outlet:O1", provider: str = "wechat",
          **extra: str) -> Sale:
    fields = {"ticket_no": "T1", "price": price, "station_fee": fee, "ticket_type": "adult",
              "channel": "agent", "route_id": "R1", "region": "440106", "station_id": "S1",
              "carrier_id": "C1", "seller": seller, "provider": provider, **extra}
    return Sale(**fields)  # type: ignore[arg-type]


def test_every_fen_of_every_ticket_lands_somewhere() -> None:
    rng = random.Random(7)
    version = {"_id": "v", **check({"lines": [
        {"match": {}, "commission_bp": 333, "platform_bp": 77,
         "refund_fee": {"station_bp": 3333, "platform_bp": 1111}},
        {"match": {"region": "440000", "channel": "agent"}, "commission_bp": 500,
         "platform_bp": 0}], "provider_fee_bp": {"wechat": 60, "alipay": 55}})}
    for _ in range(3000):
        price = rng.randrange(1, 50_000)
        sale = _sale(price, rng.randrange(0, price + 1), rng.choice([None, "outlet:O1"]),
                     rng.choice(["wechat", "alipay", "cash"]))
        shares = split_sale(version, sale)
        assert sum(shares.values()) == price and all(v > 0 for v in shares.values())
        assert shares.get("station:S1", 0) == sale.station_fee
        fee = rng.randrange(0, price + 1)
        fee_shares = split_fee(version, sale, fee)
        assert sum(fee_shares.values()) == fee and all(v > 0 for v in fee_shares.values())
    # the most specific line wins (region 44xxxx and channel agent: 5 % commission)
    shares = split_sale(version, _sale(10_000, 1_000))
    assert shares["outlet:O1"] == 450 and "platform:keyun" not in shares
    # rounding is floor, the fen left over are the carrier's, deterministically
    shares = split_sale(DEFAULT, _sale(101, 0, provider="wechat"))
    assert shares == {"outlet:O1": 3, "platform:keyun": 1, "carrier:C1": 97}
    assert split_sale(DEFAULT, _sale(101, 0)) == shares


@pytest.mark.parametrize("body, field", [
    ({"lines": []}, "lines"),
    ({"lines": [{"commission_bp": 9000, "platform_bp": 1000}],
      "provider_fee_bp": {"wechat": 60}}, "lines[0]"),
    ({"lines": [{"match": {"carrier_id": "C1"}}]}, "lines[0].match"),
    ({"lines": [{"refund_fee": {"station_bp": 6000, "platform_bp": 5000}}]},
     "lines[0].refund_fee"),
    ({"lines": [{}], "provider_fee_bp": {"wechat": 2000}}, "provider_fee_bp"),
    ({"lines": [{}], "remainder": "station"}, "remainder"),
])
def test_a_rule_that_would_lose_or_invent_money_is_refused(body: dict, field: str) -> None:
    with pytest.raises(DomainError) as refused:
        check(body)
    assert refused.value.code == "CLEARING_RULE_INVALID"
    assert refused.value.details["field"] == field


# --- the ledger over real sales -------------------------------------------------------------
async def _post(services) -> None:
    """Post what happened (the Keyun process's job may have posted some already)."""
    await services.ledger.run()


async def _order_entries(db, order_no: str) -> list[dict]:
    return await db.ledger_entries.find({"order_no": order_no}).to_list()


async def _balanced(services) -> None:
    report = await services.ledger.check()
    assert report["differences"] == {} and report["journal_total"] == 0, report


async def _paid_order(api: ApiClient, db, offset: int, index: int, people: int = 2
                      ) -> tuple[str, dict]:
    token, order, _ = await pending_payment(api, db, offset, index)
    if people > 1:  # pending_payment books one passenger: book a bigger order instead
        dep = await native_departure(db, offset, index)
        await api.post(f"/api/v1/orders/{order['order_no']}/cancel", {}, token=token)
        order = (await api.post("/api/v1/orders", {
            "departure_id": dep["_id"], "contact_phone": "13812345678", "channel": "miniapp",
            "passengers": [person(f"乘客{i}") for i in range(people)]}, token=token)).body
        assert (await api.post(f"/api/v1/orders/{order['order_no']}/pay",
                               {"method": "wechat_jsapi"}, token=token)).status == 200
    await api.post(f"/sandbox/payments/{order['order_no']}/confirm")
    return token, await wait_status(api, token, order["order_no"], "issued")


@pytest.mark.gen_test(timeout=120)
async def test_sales_refunds_and_their_money_post_balanced_entries_once(
        api: ApiClient, db, services) -> None:
    token, order = await _paid_order(api, db, 9, 3)
    first, second = (t["ticket_no"] for t in order["tickets"])
    await _post(services)
    entries = {e["_id"]: e for e in await _order_entries(db, order["order_no"])}
    attempt = await db.payments.find_one({"order_no": order["order_no"], "status": "paid"})
    assert f"mv:pay:{attempt['out_trade_no']}" in entries
    assert {f"sale:{first}", f"sale:{second}"} <= set(entries)
    for entry in entries.values():
        assert sum(p["amount"] for p in entry["postings"]) == 0
    ticket = await db.tickets.find_one({"ticket_no": first})
    dep = await db.departures.find_one({"_id": ticket["departure_id"]})
    sale = {p["account"]: -p["amount"] for p in entries[f"sale:{first}"]["postings"]}
    assert sale.pop("payable:orders") == -ticket["price"]
    assert sum(sale.values()) == ticket["price"]
    assert sale.get(f"station:{dep['station_id']}", 0) == ticket["station_fee"]
    assert sale["provider:wechat"] > 0 and sale[f"carrier:{dep['carrier_id']}"] > 0
    # the passenger refunds one ticket: its shares come back, the fee is shared out
    quote = (await api.get(f"/api/v1/tickets/{first}/refund-quote", token=token)).body
    assert (await api.post(f"/api/v1/tickets/{first}/refund", {}, token=token)).status == 200
    await services.payments.execute_refunds()
    await wait_refund(db, f"ticket:{first}")
    await _post(services)
    entries = {e["_id"]: e for e in await _order_entries(db, order["order_no"])}
    back = entries[f"return:{first}"]
    assert back["kind"] == "ticket_refund"
    moved = {p["account"]: p["amount"] for p in back["postings"]}
    assert moved["payable:orders"] == -quote["refund_amount"]
    fee_shares = back["ticket"]["fee_shares"]
    assert sum(fee_shares.values()) == quote["fee"] > 0
    request = await db.refund_requests.find_one({"_id": f"ticket:{first}"})
    assert f"mv:refund:{request['out_refund_no']}" in entries
    # what the passenger paid, less what went back, is exactly what was shared out
    payable = sum(p["amount"] for e in entries.values() for p in e["postings"]
                  if p["account"] == "payable:orders")
    assert payable == 0
    # running the job again, or the whole check, adds nothing and finds it balanced
    count = await db.ledger_entries.count_documents({})
    await _post(services)
    await services.ledger.catch_up(days=1)
    assert await db.ledger_entries.count_documents({}) == count
    await _balanced(services)
    # the accounts page on the server; their balances, summed over every page, are zero
    finance = (await api.login("finance"))["token"]
    accounts = "/api/v1/admin/ledger/accounts"
    every = (await api.get(f"{accounts}?limit=500", token=finance)).body
    assert every["count"] == len(every["accounts"]) == await db.ledger_accounts.count_documents(
        {}) and every["total"] == 0
    part = (await api.get(f"{accounts}?limit=2&offset=1", token=finance)).body
    assert part["accounts"] == every["accounts"][1:3] and part["total"] == 0
    assert part["count"] == every["count"]
    carriers = (await api.get(f"{accounts}?prefix=carrier:&limit=500", token=finance)).body
    assert carriers["accounts"] and all(a["account"].startswith("carrier:")
                                        for a in carriers["accounts"])
    assert carriers["total"] == sum(a["balance"] for a in carriers["accounts"])
    odd = await api.get(f"{accounts}?prefix=%28.%2A", token=finance)  # "(.*": text, no regex
    assert odd.status == 200 and odd.body["count"] == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_cancelled_departure_refund_costs_the_carrier_alone(api: ApiClient, db,
                                                                    services) -> None:
    token, order = await _paid_order(api, db, 9, 5, people=1)
    ticket_no = order["tickets"][0]["ticket_no"]
    ticket = await db.tickets.find_one({"ticket_no": ticket_no})
    operator = (await api.login("operator"))["token"]
    cancelled = await api.post(f"/api/v1/admin/departures/{ticket['departure_id']}/cancel",
                               {"reason": "车辆故障"}, token=operator)
    assert cancelled.status == 200, cancelled.text
    refund = await api.post(f"/api/v1/tickets/{ticket_no}/refund", {}, token=token)
    assert refund.status == 200 and refund.body["fee"] == 0, refund.text
    await _post(services)
    back = await db.ledger_entries.find_one({"_id": f"return:{ticket_no}"})
    sale = await db.ledger_entries.find_one({"_id": f"sale:{ticket_no}"})
    dep = await db.departures.find_one({"_id": ticket["departure_id"]})
    assert back["kind"] == "cancellation_refund"
    assert {p["account"]: p["amount"] for p in back["postings"]} == {
        f"carrier:{dep['carrier_id']}": ticket["price"], "payable:orders": -ticket["price"]}
    # the station keeps its fee
    assert any(p["account"] == f"station:{dep['station_id']}" for p in sale["postings"]) == \
        (ticket["station_fee"] > 0)
    await _balanced(services)


@pytest.mark.gen_test(timeout=60)
async def test_clearing_rules_are_drafted_simulated_and_published(api: ApiClient, db,
                                                                  services) -> None:
    finance = (await api.login("finance"))["token"]
    gate = (await api.login("gate"))["token"]
    draft = await api.post("/api/v1/admin/clearing-rules", {
        "lines": [{"match": {}, "commission_bp": 300, "platform_bp": 300,
                   "refund_fee": {"station_bp": 3000, "platform_bp": 2000}}],
        "provider_fee_bp": {"wechat": 60, "alipay": 60}, "note": "平台服务费 3%"},
        token=finance)
    assert draft.status == 201 and draft.body["state"] == "draft", draft.text
    bad = await api.post("/api/v1/admin/clearing-rules", {"lines": [
        {"commission_bp": 6000, "platform_bp": 5000}]}, token=finance)
    assert bad.status == 422 and bad.body["error"]["code"] == "CLEARING_RULE_INVALID"
    assert (await api.post("/api/v1/admin/clearing-rules", {"lines": [{}]},
                           token=gate)).status == 403
    await _paid_order(api, db, 9, 6, people=1)
    await _post(services)
    since = (dt.datetime.now(LOCAL_TZ) - dt.timedelta(hours=1)).isoformat()
    sim = await api.post(f"/api/v1/admin/clearing-rules/{draft.body['id']}/simulate",
                         {"from": since}, token=finance)
    assert sim.status == 200, sim.text
    report = sim.body
    assert report["tickets"] >= 1 and report["total_current"] == report["total_draft"]
    platform = next(r for r in report["entities"] if r["entity"] == "platform:keyun")
    assert platform["draft"] > platform["current"]  # 3 % instead of 1 %
    assert sum(r["difference"] for r in report["entities"]) == 0
    published = await api.post(f"/api/v1/admin/clearing-rules/{draft.body['id']}/publish",
                               {"effective_from": (dt.datetime.now(LOCAL_TZ) +
                                                   dt.timedelta(days=30)).isoformat()},
                               token=finance)
    assert published.status == 200 and published.body["state"] == "scheduled", published.text
    again = await api.post(f"/api/v1/admin/clearing-rules/{draft.body['id']}/publish", {},
                           token=finance)
    assert again.status == 409 and again.body["error"]["code"] == "CLEARING_RULE_PUBLISHED"
    listing = (await api.get("/api/v1/admin/clearing-rules", token=finance)).body
    assert listing["in_force"] == "default"


# --- settlement ---------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=180)
async def test_settlement_runs_once_and_its_statements_are_the_ledgers(api: ApiClient, db,
                                                                       services) -> None:
    finance = (await api.login("finance"))["token"]
    entities = (await api.get("/api/v1/admin/settlement/entities?limit=500",
                              token=finance)).body
    assert entities["total"] == len(entities["entities"])
    kinds = {e["kind"] for e in entities["entities"]}
    assert {"carrier", "station", "outlet", "provider", "platform"} <= kinds
    ids = {e["id"] for e in entities["entities"]}
    assert {f"partner:{p}" for p in await db.partners.distinct("_id")} <= ids
    # they page on the server, by account, filtered by kind and by a part of account or name
    carriers = [e for e in entities["entities"] if e["kind"] == "carrier"]
    page = (await api.get("/api/v1/admin/settlement/entities?kind=carrier&limit=2&offset=1",
                          token=finance)).body
    assert page["entities"] == carriers[1:3] and page["total"] == len(carriers)
    named = carriers[-1]["name"][-4:]
    found = (await api.get(f"/api/v1/admin/settlement/entities?q={quote(named)}",
                           token=finance)).body["entities"]
    assert carriers[-1] in found and all(named in e["name"] or named in e["id"] for e in found)
    _, order = await _paid_order(api, db, 9, 7)
    await _post(services)
    dep = await db.departures.find_one({"_id": order["departure_id"]})
    carrier = f"carrier:{dep['carrier_id']}"
    terms = await api.post("/api/v1/admin/settlement/entities", {
        "id": carrier, "cycle_days": 2,
        "bank": {"bank_name": "中国工商银行", "account_name": "客运公司",
                 "account_no": "6222020200112233445"}}, token=finance)
    assert terms.status == 200 and terms.body["bank"]["account_no"] == "***************3445"
    stored = await db.settlement_entities.find_one({"_id": carrier})
    assert "6222020200112233445" not in json.dumps(stored, default=str)
    assert (await api.post("/api/v1/admin/settlement/entities", {"id": "carrier:NOPE"},
                           token=finance)).status == 422
    # this order's entries were booked three days ago; the carrier settles T+2
    yesterday = local_today() - dt.timedelta(days=1)
    booked = (yesterday - dt.timedelta(days=2)).isoformat()
    await db.ledger_entries.update_many({"order_no": order["order_no"]},
                                        {"$set": {"booked_on": booked}})
    owed = -sum(p["amount"] for e in await _order_entries(db, order["order_no"])
                for p in e["postings"] if p["account"] == carrier)
    assert owed > 0
    assert (await api.post("/api/v1/admin/settlements",
                           {"through_date": local_today().isoformat()},
                           token=finance)).body["error"]["code"] == "SETTLEMENT_DAY_OPEN"
    # the day's payments are not reconciled with the provider's bill yet: no settling it
    unreconciled = await api.post("/api/v1/admin/settlements",
                                  {"through_date": yesterday.isoformat()}, token=finance)
    assert unreconciled.status == 409, unreconciled.text
    error = unreconciled.body["error"]
    assert error["code"] == "RECONCILIATION_MISSING"
    assert {"source": "wechat", "date": booked} in error["missing"]
    await _reconcile(api, finance, error["missing"])
    runs = await asyncio.gather(*[api.post("/api/v1/admin/settlements",
                                           {"through_date": yesterday.isoformat()},
                                           token=finance) for _ in range(3)])
    assert all(r.status == 200 for r in runs), [r.text for r in runs]
    assert len({r.body["id"] for r in runs}) == 1
    batch_id = runs[0].body["id"]
    for _ in range(100):
        batch = (await api.get(f"/api/v1/admin/settlements/{batch_id}", token=finance)).body
        if batch["status"] == "done":
            break
        await asyncio.sleep(0.1)
    assert batch["status"] == "done"
    row = next(e for e in batch["entities"] if e["entity"] == carrier)
    assert row["amount"] == owed and row["covered_through"] == booked
    # the batch's rows page on the server too, and find an entity by its account
    part = await api.get(f"/api/v1/admin/settlements/{batch_id}/entities?limit=1&offset=1",
                         token=finance)
    assert part.body == {"entities": batch["entities"][1:2], "total": len(batch["entities"])}
    mine = await api.get(f"/api/v1/admin/settlements/{batch_id}/entities?q={carrier.upper()}",
                         token=finance)
    assert mine.body["entities"] == [row] and mine.body["total"] == 1
    assert row["sales"] == owed and row["settlement_code"].startswith(batch_id)
    payouts = await db.ledger_entries.count_documents({"batch": batch_id})
    assert await db.ledger_entries.count_documents(
        {"_id": f"payout:{batch_id}:{carrier}"}) == 1
    again = await api.post("/api/v1/admin/settlements", {"through_date": yesterday.isoformat()},
                           token=finance)
    assert again.body["id"] == batch_id
    assert await db.ledger_entries.count_documents({"batch": batch_id}) == payouts
    earlier = await api.post("/api/v1/admin/settlements",
                             {"through_date": booked}, token=finance)
    assert earlier.status == 409 and earlier.body["error"]["code"] == "SETTLEMENT_OUT_OF_ORDER"
    # the batches and the reconciliation runs page on the server, newest first
    listed = await api.get("/api/v1/admin/settlements?limit=1", token=finance)
    assert [b["id"] for b in listed.body["batches"]] == [batch_id]
    assert listed.body["total"] == await db.settlement_batches.count_documents({})
    runs = await api.get("/api/v1/admin/reconciliations?limit=2&offset=1", token=finance)
    assert runs.status == 200 and len(runs.body["runs"]) <= 2
    assert runs.body["total"] >= len(runs.body["runs"]) + 1, runs.text
    # the statements: CSV and XLSX, totals equal to the ledger's
    base = f"{api.base_url}/api/v1/admin/settlements/{batch_id}/statements/{carrier}"
    headers = {"Authorization": f"Bearer {finance}"}
    got = await AsyncHTTPClient().fetch(base + ".csv", headers=headers)
    rows = list(csv.reader(io.StringIO(got.body.decode("utf-8-sig"))))
    totals = {r[0]: r[1] for r in rows if len(r) == 2}
    assert totals["应结金额"] == f"{owed // 100}.{owed % 100:02d}"
    assert totals["结算周期"] == "T+2"
    lines = [r for r in rows if len(r) == 9 and r[1].startswith("sale:")]
    assert {r[1] for r in lines} == {f"sale:{t['ticket_no']}" for t in order["tickets"]}
    assert {(r[5], r[6]) for r in lines} == {("miniapp", dep["station_id"])}
    got = await AsyncHTTPClient().fetch(base + ".xlsx", headers=headers)
    sheet = load_workbook(io.BytesIO(got.body)).active
    cells = {r[0]: r[1] for r in sheet.iter_rows(values_only=True) if r and r[0]}
    assert round(cells["应结金额"] * 100) == owed
    assert sum(round(r[8] * 100) for r in sheet.iter_rows(values_only=True)
               if r and len(r) > 8 and isinstance(r[8], float)) == owed
    assert (await api.get(f"/api/v1/admin/settlements/{batch_id}/statements/carrier:NOPE.csv",
                          token=finance)).status == 404
    # the payout instructions: the carrier to its bank account as it was when settled
    await api.post("/api/v1/admin/settlement/entities", {
        "id": carrier, "bank": {"bank_name": "中国农业银行", "account_name": "改过的户名",
                                "account_no": "6228480000000000001"}}, token=finance)
    payouts = await api.get(f"/api/v1/admin/settlements/{batch_id}/payouts", token=finance)
    assert payouts.status == 200, payouts.text
    line = next(ln for ln in payouts.body["lines"] if ln["entity"] == carrier)
    assert line["amount"] == owed and line["account_no"] == "***************3445"
    assert line["bank_name"] == "中国工商银行" and "account_no_enc" not in line
    assert payouts.body["amount"] == sum(ln["amount"] for ln in payouts.body["lines"])
    assert carrier not in {p["entity"] for p in payouts.body["no_bank_account"]}
    owing = {r["entity"] for r in batch["entities"] if r["amount"] > 0}
    assert {ln["entity"] for ln in payouts.body["lines"]} | {
        p["entity"] for p in payouts.body["no_bank_account"]} == owing
    operator = (await api.login("operator"))["token"]
    assert (await api.get(f"/api/v1/admin/settlements/{batch_id}/payouts",
                          token=operator)).status == 200
    file_url = f"/api/v1/admin/settlements/{batch_id}/payouts.csv"
    assert (await api.get(file_url, token=operator)).status == 403  # full account numbers
    got = await AsyncHTTPClient().fetch(api.base_url + file_url, headers=headers)
    rows = list(csv.reader(io.StringIO(got.body.decode("utf-8-sig"))))
    assert rows[0][:4] == ["批次号", batch_id, "总笔数", str(payouts.body["count"])]
    assert rows[0][5] == f"{payouts.body['amount'] // 100}.{payouts.body['amount'] % 100:02d}"
    paid = next(r for r in rows[2:] if r[1] == "6222020200112233445")
    assert paid[2:5] == ["客运公司", "中国工商银行", f"{owed // 100}.{owed % 100:02d}"]
    assert len(rows) == 2 + payouts.body["count"]
    assert await db.audit.count_documents({"action": "settlement.payout_file",
                                           "target": batch_id}) >= 1
    await _balanced(services)


async def _reconcile(api: ApiClient, finance: str, missing: list[dict]) -> None:
    """Reconcile each (source, day), accepting what differs (other tests' planted data)."""
    for item in missing:
        run = await api.post("/api/v1/admin/reconciliations", item, token=finance)
        assert run.status == 201, run.text
        for diff in run.body["differences"]:
            done = await api.post(f"/api/v1/admin/reconciliations/{run.body['id']}/differences/"
                                  f"{diff['id']}/resolve", {"action": "accept", "note": "核实"},
                                  token=finance)
            assert done.status == 200, done.text


# --- reconciliation -----------------------------------------------------------------------
async def _age(providers, db, out_trade_no: str, days: int = 1) -> None:
    """Move a payment (and its refunds) back by days, with us and at the provider."""
    back = dt.timedelta(days=days)
    attempt = await db.payments.find_one({"out_trade_no": out_trade_no})
    await db.payments.update_one({"_id": attempt["_id"]},
                                 {"$set": {"paid_at": attempt["paid_at"] - back}})
    async for request in db.refund_requests.find({"payment_ref": out_trade_no,
                                                  "done_at": {"$exists": True}}):
        await db.refund_requests.update_one({"_id": request["_id"]},
                                            {"$set": {"done_at": request["done_at"] - back}})
    await AsyncHTTPClient().fetch(f"{providers.url}/_sandbox/wechatpay/age", method="POST",
                                  body=json.dumps({"out_trade_no": out_trade_no, "days": days}))


@pytest.mark.gen_test(timeout=180)
async def test_reconciliation_finds_every_planted_difference_and_invents_none(
        api: ApiClient, db, providers, services) -> None:
    finance = (await api.login("finance"))["token"]
    # a day far back that only this test's payments are moved into
    days = 40
    day = (local_today() - dt.timedelta(days=days)).isoformat()
    clean, tokens = [], []
    for index in range(5):
        token, order = await _paid_order(api, db, 7, index, people=1)
        attempt = await db.payments.find_one({"order_no": order["order_no"], "status": "paid"})
        clean.append(attempt["out_trade_no"])
        tokens.append((token, order["tickets"][0]["ticket_no"]))
    # one refunded: the bill's refund row is a refund, matched to ours
    token, ticket_no = tokens[0]
    assert (await api.post(f"/api/v1/tickets/{ticket_no}/refund", {},
                           token=token)).status == 200
    await services.payments.execute_refunds()
    await wait_refund(db, f"ticket:{ticket_no}")
    for number in clean:
        await _age(providers, db, number, days)
    # planted: ours says another amount; ours lost a payment; ours closed a paid one
    short, gone, closed = clean[1], clean[2], clean[3]
    await db.payments.update_one({"out_trade_no": short}, {"$inc": {"amount": -1}})
    await db.payments.delete_one({"out_trade_no": gone})
    await db.payments.update_one({"out_trade_no": closed}, {"$set": {"status": "closed"}})
    # and one only we have: an attempt paid with us that the provider never saw
    fake = {**await db.payments.find_one({"out_trade_no": clean[4]}),
            "out_trade_no": "KYFAKE" + clean[4][-10:]}
    fake.pop("_id")
    await db.payments.insert_one(fake)
    run = await api.post("/api/v1/admin/reconciliations", {"date": day, "source": "wechat"},
                         token=finance)
    assert run.status == 201, run.text
    body = run.body
    found = {(d["class"], d["kind"], d["ref"]) for d in body["differences"]}
    assert found == {("amount_differs", "payment", short), ("only_theirs", "payment", gone),
                     ("status_differs", "payment", closed),
                     ("only_ours", "payment", fake["out_trade_no"])}, body["differences"]
    assert body["matched"] == 3  # two clean payments and the refund row
    assert body["totals"]["theirs"]["refunds"] == 1 and not body["totals"]["match"]
    assert body["open_differences"] == 4
    paged = await api.get(f"/api/v1/admin/reconciliations/{body['id']}/differences?limit=3"
                          "&offset=1", token=finance)
    assert paged.body == {"differences": body["differences"][1:4], "total": 4}
    nope = await api.get("/api/v1/admin/reconciliations/NOPE/differences", token=finance)
    assert nope.status == 404
    # a day without trades is an empty, clean run
    quiet = await api.post("/api/v1/admin/reconciliations",
                           {"date": "2026-01-02", "source": "alipay"}, token=finance)
    assert quiet.status == 201 and quiet.body["differences"] == [] and quiet.body["lines"] == 0
    # the open differences hold the settlement of their day back
    blocked = await api.post("/api/v1/admin/settlements", {"through_date": day}, token=finance)
    assert blocked.status == 409 and blocked.body["error"]["code"] == "RECONCILIATION_OPEN"
    # finance resolves them: the missing payment with an adjusting entry, the rest accepted
    by_ref = {d["ref"]: d["id"] for d in body["differences"]}
    run_id = body["id"]
    adjusted = await api.post(
        f"/api/v1/admin/reconciliations/{run_id}/differences/{by_ref[gone]}/resolve",
        {"action": "adjust", "note": "支付记录丢失，按账单补记"}, token=finance)
    assert adjusted.status == 200 and adjusted.body["status"] == "resolved", adjusted.text
    entry = await db.ledger_entries.find_one({"_id": adjusted.body["resolution"]["entry"]})
    missing = next(d["theirs"] for d in body["differences"] if d["ref"] == gone)
    assert {p["account"]: p["amount"] for p in entry["postings"]} == {
        "funds:wechat": missing, "suspense:reconciliation": -missing}
    twice = await api.post(
        f"/api/v1/admin/reconciliations/{run_id}/differences/{by_ref[gone]}/resolve",
        {"action": "adjust", "note": "again"}, token=finance)
    assert twice.status == 409 and twice.body["error"]["code"] == "DIFFERENCE_RESOLVED"
    nothing = await api.post(
        f"/api/v1/admin/reconciliations/{run_id}/differences/{by_ref[closed]}/resolve",
        {"action": "adjust", "note": "?"}, token=finance)
    assert nothing.status == 422 and nothing.body["error"]["code"] == "NOTHING_TO_ADJUST"
    for ref in (short, closed, fake["out_trade_no"]):
        done = await api.post(
            f"/api/v1/admin/reconciliations/{run_id}/differences/{by_ref[ref]}/resolve",
            {"action": "accept", "note": "测试植入的差异"}, token=finance)
        assert done.status == 200, done.text
    after = (await api.get(f"/api/v1/admin/reconciliations/{run_id}", token=finance)).body
    assert after["open_differences"] == 0
    still = await api.get(f"/api/v1/admin/reconciliations/{run_id}/differences?status=open",
                          token=finance)
    assert still.body == {"differences": [], "total": 0}
    assert all(d["resolution"]["by"] == "finance" for d in after["differences"])
    audit = await db.audit.count_documents({"action": "reconciliation.resolve",
                                            "target": {"$regex": f"^{run_id}:"}})
    assert audit == 4


async def _bought(api: ApiClient, dep_id: str, with_token: bool = False) -> Any:
    """One passenger's WeChat-paid order on a departure, issued by its station (and the
    passenger's token, when asked)."""
    token = await wechat_member(api)
    order = (await api.post("/api/v1/orders", {
        "departure_id": dep_id, "contact_phone": "13812345678", "channel": "miniapp",
        "passengers": [person()]}, token=token)).body
    assert (await api.post(f"/api/v1/orders/{order['order_no']}/pay",
                           {"method": "wechat_jsapi"}, token=token)).status == 200
    await api.post(f"/sandbox/payments/{order['order_no']}/confirm")
    issued = await wait_status(api, token, order["order_no"], "issued")
    return (token, issued) if with_token else issued


@pytest.mark.parametrize("vendor", ["rest", "xml"])
@pytest.mark.gen_test(timeout=180)
async def test_station_daily_sales_reconcile_against_our_tickets(
        api: ApiClient, db, simulators, services, vendor: str) -> None:
    finance = (await api.login("finance"))["token"]
    dep = await pick(db, vendor, 3)
    orders = [await _bought(api, dep["_id"]) for _ in range(4)]
    tickets = [await db.tickets.find_one({"ticket_no": o["tickets"][0]["ticket_no"]})
               for o in orders]
    clean, pricey, lost, returned = tickets
    # planted: the station gave a seat back that we still count as sold
    secret = simulators.systems[dep["station_id"]]["secret"]
    if vendor == "rest":
        await AsyncHTTPClient().fetch(
            f"{simulators.url('rest')}/api/orders/{returned['sale_id']}/refund",
            method="POST", headers={"Authorization": f"Bearer {secret}"},
            body=json.dumps({"seatNos": [returned["seat"]]}))
    else:
        station = XmlExchange(simulators.url("xml"), secret)
        assert await station.refund(None, returned["sale_id"], (returned["seat"],))
    # we charged another price; we lost the station's sale number
    await db.tickets.update_one({"_id": pricey["_id"]}, {"$inc": {"price": 100}})
    await db.tickets.update_one({"_id": lost["_id"]}, {"$set": {"sale_id": "BOGUS-" +
                                                                lost["sale_id"]}})
    # posted as they were sold (the posting job's cursor would not look back three days
    # for them once they are back-dated below; the carrier's account comes with its sales)
    await services.ledger.run()
    day = local_today() - dt.timedelta(days=3)
    for ticket in tickets:  # sold three days ago, with us and at the station
        await db.tickets.update_one({"_id": ticket["_id"]}, {"$set": {
            "issued_at": ticket["issued_at"] - dt.timedelta(days=3)}})
        await control(simulators, vendor, "age", {"orderId": ticket["sale_id"], "days": 3})
    run = await api.post("/api/v1/admin/reconciliations",
                         {"date": day.isoformat(), "source": f"station:{dep['station_id']}"},
                         token=finance)
    assert run.status == 201, run.text
    found = {(d["class"], d["kind"], d["ref"]) for d in run.body["differences"]}

    def ref(t: dict, sale_id: str | None = None) -> str:
        return f"{sale_id or t['sale_id']}/{t['seat']}"

    assert found == {("amount_differs", "sale", ref(pricey)),
                     ("only_ours", "sale", ref(lost, "BOGUS-" + lost["sale_id"])),
                     ("only_theirs", "sale", ref(lost)),
                     ("status_differs", "return", ref(returned))}, run.body["differences"]
    assert run.body["matched"] == 2  # the clean sale and the returned one's sale
    assert ref(clean) not in {d["ref"] for d in run.body["differences"]}
    # a station difference is adjusted on the settlement entity that bears it
    by_ref = {d["ref"]: d for d in run.body["differences"]}
    resolve = f"/api/v1/admin/reconciliations/{run.body['id']}/differences/"
    priced = by_ref[ref(pricey)]
    refused = await api.post(resolve + f"{priced['id']}/resolve",
                             {"action": "adjust", "note": "x"}, token=finance)
    assert refused.status == 422 and refused.body["error"]["code"] == "ADJUSTMENT_ACCOUNT"
    carrier = f"carrier:{dep['carrier_id']}"
    unknown = await api.post(resolve + f"{priced['id']}/resolve",
                             {"action": "adjust", "note": "x", "account": "carrier:NOPE"},
                             token=finance)
    assert unknown.status == 422 and unknown.body["error"]["code"] == "REFERENCE_NOT_FOUND"
    adjusted = await api.post(resolve + f"{priced['id']}/resolve",
                              {"action": "adjust", "note": "按车站售价调账", "account": carrier},
                              token=finance)
    assert adjusted.status == 200, adjusted.text
    entry = await db.ledger_entries.find_one({"_id": adjusted.body["resolution"]["entry"]})
    # we charged 1 yuan more than the station's price: the carrier owes it back
    assert {p["account"]: p["amount"] for p in entry["postings"]} == {
        carrier: 100, "suspense:reconciliation": -100}
    back = by_ref[ref(returned)]  # the same price on both sides: finance says how much
    same = await api.post(resolve + f"{back['id']}/resolve", {
        "action": "adjust", "note": "x", "account": f"station:{dep['station_id']}"},
        token=finance)
    assert same.status == 422 and same.body["error"]["code"] == "NOTHING_TO_ADJUST"
    returned_back = await api.post(resolve + f"{back['id']}/resolve", {
        "action": "adjust", "note": "车站已退票", "account": f"station:{dep['station_id']}",
        "amount": -returned["price"]}, token=finance)
    assert returned_back.status == 200, returned_back.text
    entry = await db.ledger_entries.find_one({"_id": returned_back.body["resolution"]["entry"]})
    assert {p["account"]: p["amount"] for p in entry["postings"]} == {
        f"station:{dep['station_id']}": returned["price"],
        "suspense:reconciliation": -returned["price"]}
    for d in run.body["differences"]:
        if d["id"] in (priced["id"], back["id"]):
            continue
        done = await api.post(resolve + f"{d['id']}/resolve",
                              {"action": "accept", "note": "已核实"}, token=finance)
        assert done.status == 200, done.text
    native = await db.stations.find_one({"system.vendor": "native"})
    unsupported = await api.post("/api/v1/admin/reconciliations", {
        "date": day.isoformat(), "source": f"station:{native['_id']}"}, token=finance)
    assert unsupported.status == 422
    assert unsupported.body["error"]["code"] == "STATION_UNSUPPORTED"


async def _same_route_elsewhere(db, dep: dict) -> dict:
    """Another on-sale departure of the same route and fare (a change's target)."""
    return await db.departures.find_one(
        {"route_id": dep["route_id"], "_id": {"$ne": dep["_id"]}, "status": "on_sale",
         "service_date": {"$gt": dep["service_date"]}}, sort=[("service_date", 1)])


@pytest.mark.reliability("R7")
@pytest.mark.gen_test(timeout=300)
async def test_the_ledger_balances_under_concurrent_sales_refunds_and_changes(
        api: ApiClient, db, services) -> None:
    """Orders bought, paid, refunded and changed all at once while several posters run side
    by side and some of them are cut off mid-post (their transaction never commits): every
    ticket is cleared once, every movement posted once, and the books balance."""
    deps = [await native_departure(db, 6, i) for i in range(6)]
    bought = await asyncio.gather(*[_bought(api, deps[i % 6]["_id"], with_token=True)
                                    for i in range(30)])
    stop = asyncio.Event()
    rng = random.Random(15)

    async def poster() -> None:
        while not stop.is_set():
            await services.ledger.run()
            await asyncio.sleep(rng.random() * 0.05)

    cuts = 0

    async def cut_off() -> None:  # a poster whose process dies half-way through
        nonlocal cuts
        while not stop.is_set():
            task = asyncio.ensure_future(services.ledger.run())
            await asyncio.sleep(rng.random() * 0.03)
            cuts += task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    posters = [asyncio.ensure_future(poster()) for _ in range(2)] + \
        [asyncio.ensure_future(cut_off())]

    async def refund(token: str, order: dict) -> str:
        ticket_no = order["tickets"][0]["ticket_no"]
        done = await api.post(f"/api/v1/tickets/{ticket_no}/refund", {}, token=token)
        assert done.status == 200, done.text
        return ticket_no

    async def change(token: str, order: dict) -> tuple[str, str]:
        ticket = await db.tickets.find_one({"ticket_no": order["tickets"][0]["ticket_no"]})
        dep = await db.departures.find_one({"_id": ticket["departure_id"]})
        target = await _same_route_elsewhere(db, dep)
        done = await api.post(f"/api/v1/tickets/{ticket['ticket_no']}/change",
                              {"departure_id": target["_id"]}, token=token)
        assert done.status == 200, done.text
        return ticket["ticket_no"], done.body["ticket_no"]

    refunded = asyncio.gather(*[refund(t, o) for t, o in bought[:10]])
    changed = asyncio.gather(*[change(t, o) for t, o in bought[10:16]])
    more = asyncio.gather(*[_bought(api, deps[i % 6]["_id"], with_token=True)
                            for i in range(10)])
    refunded_nos, changes, late = await asyncio.gather(refunded, changed, more)
    for _ in range(3):
        await services.payments.execute_refunds()
    for ticket_no in refunded_nos:
        await wait_refund(db, f"ticket:{ticket_no}")
    stop.set()
    await asyncio.gather(*posters)
    await services.ledger.run()
    await _balanced(services)
    orders = [o for _, o in [*bought, *late]]
    for order in orders:
        entries = await _order_entries(db, order["order_no"])
        ids = [e["_id"] for e in entries]
        assert len(ids) == len(set(ids))
        tickets = await db.tickets.find({"order_no": order["order_no"]}).to_list()
        for ticket in tickets:
            assert f"sale:{ticket['ticket_no']}" in ids
        if order["tickets"][0]["ticket_no"] in refunded_nos:
            assert f"return:{order['tickets'][0]['ticket_no']}" in ids
        # all that came in was cleared or paid back: the order owes its passenger nothing
        assert sum(p["amount"] for e in entries for p in e["postings"]
                   if p["account"] == "payable:orders") == 0, order["order_no"]
    for old, new in changes:
        entry = await db.ledger_entries.find_one({"_id": f"sale:{new}"})
        assert entry["kind"] == "change" and entry["replaces"] == old
    entries = sum([len(await _order_entries(db, o["order_no"])) for o in orders])
    record("R7", load=f"{len(orders)} orders bought and paid, 10 refunded and 6 changed at "
                      "once, 2 ledger posters side by side",
           faults=f"a third poster cut off mid-post {cuts} times (its transaction never "
                  "committed)",
           checked="trial balance; each ticket's sale and return entries; what each order "
                   "owes its passenger",
           figure=f"debits = credits; {entries} entries, none twice; every ticket cleared "
                  "once; 0 fen owed on any order")
    # a posting that lost every race was skipped, logged and posted by a later run: the
    # books above are complete either way


@pytest.mark.reliability("R6")
@pytest.mark.gen_test(timeout=240)
async def test_five_thousand_payments_reconcile_with_every_difference_found(
        api: ApiClient, db, providers) -> None:
    """A busy day at WeChat Pay — 5,000 payments, 300 of them refunded — against our books
    with differences of every class planted among them: each is found, nothing else is
    reported, and payments booked across midnight on either side are matched."""
    finance = (await api.login("finance"))["token"]
    day = local_today() - dt.timedelta(days=100)
    prefix = "KY5K" + secrets.token_hex(3).upper()
    seeded = await sandbox(providers, "seed", {"day": day.isoformat(), "count": 5000,
                                               "refunds": 300, "prefix": prefix})
    after = await sandbox(providers, "seed", {"day": (day + dt.timedelta(days=1)).isoformat(),
                                              "count": 2, "prefix": prefix + "N"})
    start = dt.datetime.combine(day, dt.time(), LOCAL_TZ)
    end = start + dt.timedelta(days=1)
    txs, refunds = seeded["transactions"], seeded["refunds"]
    rng = random.Random(5000)
    picked = rng.sample(range(300, 5000), 23)  # payments without refunds, for planting
    amount_differs, only_theirs, status_differs = picked[:5], picked[5:10], picked[10:15]
    late_by_us = picked[15:18]  # booked by us five minutes after midnight
    payments = []
    for i, tx in enumerate(txs):
        if i in only_theirs:
            continue
        paid_at = dt.datetime.fromisoformat(tx["success_time"])
        if i in late_by_us:
            paid_at = end + dt.timedelta(minutes=5)
        payments.append({
            "out_trade_no": tx["out_trade_no"], "order_no": "O" + tx["out_trade_no"],
            "provider": "wechat", "method": "wechat_jsapi",
            "amount": tx["amount"] + (1 if i in amount_differs else 0),
            "status": "closed" if i in status_differs else "paid", "paid_at": paid_at,
            "created_at": paid_at, "transaction_id": tx["transaction_id"]})
    only_ours = [f"{prefix}X{i}" for i in range(5)]
    for number in only_ours:
        at = start + dt.timedelta(hours=rng.randrange(1, 23))
        payments.append({"out_trade_no": number, "order_no": "O" + number, "provider": "wechat",
                         "amount": 1234, "status": "paid", "paid_at": at, "created_at": at})
    # the provider booked these just after midnight; we, just before
    for tx in after["transactions"]:
        at = end - dt.timedelta(minutes=2)
        payments.append({"out_trade_no": tx["out_trade_no"], "order_no": "O" + tx["out_trade_no"],
                         "provider": "wechat", "amount": tx["amount"], "status": "paid",
                         "paid_at": at, "created_at": at})
    await db.payments.insert_many(payments)
    r_only_theirs, r_amount, r_status = [0, 1, 2], [3, 4, 5], [6, 7, 8]
    requests = []
    for i, refund in enumerate(refunds):
        if i in r_only_theirs:
            continue
        at = dt.datetime.fromisoformat(refund["success_time"])
        requests.append({
            "_id": f"seed:{refund['out_refund_no']}", "order_no": "O" + refund["out_trade_no"],
            "amount": refund["amount"] + (1 if i in r_amount else 0),
            "status": "processing" if i in r_status else "done", "provider": "wechat",
            "out_refund_no": refund["out_refund_no"], "payment_ref": refund["out_trade_no"],
            "created_at": at, **({} if i in r_status else {"done_at": at})})
    r_only_ours = [f"RF{prefix}Y{i}" for i in range(3)]
    for number in r_only_ours:
        at = start + dt.timedelta(hours=12)
        requests.append({"_id": f"seed:{number}", "order_no": "O" + number, "amount": 500,
                         "status": "done", "provider": "wechat", "out_refund_no": number,
                         "created_at": at, "done_at": at})
    await db.refund_requests.insert_many(requests)

    run = await api.post("/api/v1/admin/reconciliations",
                         {"date": day.isoformat(), "source": "wechat"}, token=finance)
    assert run.status == 201, run.text
    body = run.body
    found = {(d["class"], d["kind"], d["ref"]) for d in body["differences"]}
    number = [tx["out_trade_no"] for tx in txs]
    refund_no = [r["out_refund_no"] for r in refunds]
    expected = {("amount_differs", "payment", number[i]) for i in amount_differs} | \
        {("only_theirs", "payment", number[i]) for i in only_theirs} | \
        {("status_differs", "payment", number[i]) for i in status_differs} | \
        {("only_ours", "payment", n) for n in only_ours} | \
        {("only_theirs", "refund", refund_no[i]) for i in r_only_theirs} | \
        {("amount_differs", "refund", refund_no[i]) for i in r_amount} | \
        {("status_differs", "refund", refund_no[i]) for i in r_status} | \
        {("only_ours", "refund", n) for n in r_only_ours}
    assert found == expected, (found - expected, expected - found)
    assert body["lines"] == 5300
    assert body["matched"] == (5000 - 15) + (300 - 9) + 2
    theirs = body["totals"]["theirs"]
    assert theirs["payments"] == 5000 and theirs["refunds"] == 300
    assert theirs["payment_amount"] == sum(tx["amount"] for tx in txs)
    assert not body["totals"]["match"]
    record("R6", load="5,000 payments and 300 refunds against WeChat Pay's bill",
           faults=f"{len(expected)} differences planted: amounts, statuses, ours only, "
                  "theirs only — for payments and refunds",
           checked="the differences the reconciliation run reports",
           figure=f"{len(found & expected)} of {len(expected)} found, 0 invented; "
                  f"{body['matched']:,} lines matched")


@pytest.mark.gen_test(timeout=120)
async def test_the_daily_reconciliation_runs_each_source_once_after_the_bills_are_out(
        api: ApiClient, db, services) -> None:
    finance = (await api.login("finance"))["token"]
    # yesterday's morning reconciles the day before: a day the servers' own daily job (on the
    # real clock it reconciles yesterday, after 10:00 Beijing) never takes
    then = local_today() - dt.timedelta(days=1)
    early = dt.datetime.combine(then, dt.time(7), LOCAL_TZ)
    assert await services.reconciliation.daily(now=early) == 0  # bills not out yet
    late = dt.datetime.combine(then, dt.time(11), LOCAL_TZ)
    stations = await db.stations.distinct("_id", {"status": "active",
                                                  "system.vendor": {"$in": ["rest", "xml"]}})
    assert await services.reconciliation.daily(now=late) == 2 + len(stations)
    assert await services.reconciliation.daily(now=late) == 0  # once a day each
    day = (then - dt.timedelta(days=1)).isoformat()
    runs = (await api.get(f"/api/v1/admin/reconciliations?date={day}", token=finance)).body
    sources = {r["source"] for r in runs["runs"] if r["id"].startswith("AUTO-")}
    assert sources == {"wechat", "alipay", *(f"station:{s}" for s in stations)}
    for run in runs["runs"]:  # whatever other tests left on that day: accepted here
        detail = (await api.get(f"/api/v1/admin/reconciliations/{run['id']}",
                                token=finance)).body
        for diff in detail["differences"]:
            if diff["status"] == "open":
                await api.post(f"/api/v1/admin/reconciliations/{run['id']}/differences/"
                               f"{diff['id']}/resolve", {"action": "accept", "note": "测试"},
                               token=finance)

"""Electronic invoices over real HTTP: asked for by the passenger, issued by the provider's
sandbox, downloaded as a PDF that says what was paid; a refund afterwards reverses the
invoice with a red-letter one and invoices what is left; finance lists and exports them."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json

import pytest
from openpyxl import load_workbook
from pypdf import PdfReader
from tornado.httpclient import AsyncHTTPClient

from server.services.invoice_pdf import capital_amount
from tests.booking_support import issued_order, member, person
from tests.inventory_support import make_departure
from tests.support import ApiClient

COMPANY = {"buyer_type": "company", "title": "广州羊城科技有限公司", "tax_no": "91440101MA59XXXX1X",
           "email": "finance@example.com"}


async def _pdf_text(api: ApiClient, token: str, invoice_id: str) -> str:
    got = await AsyncHTTPClient().fetch(f"{api.base_url}/api/v1/invoices/{invoice_id}.pdf",
                                        headers={"Authorization": f"Bearer {token}"})
    assert got.headers["Content-Type"] == "application/pdf"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(got.body)).pages)
    return text.replace(" ", "").replace("\x00", "")  # (pypdf reads CID glyphs with NULs)


async def _invoices(api: ApiClient, token: str, order_no: str) -> list[dict]:
    return (await api.get(f"/api/v1/orders/{order_no}/invoices", token=token)).body["invoices"]


@pytest.mark.gen_test(timeout=180)
async def test_an_invoice_is_issued_as_a_pdf_and_corrected_after_a_refund(
        api: ApiClient, db, services, providers) -> None:
    token = await member(api)
    dep = await make_departure(db, seats=5, stops=2)
    unpaid = await api.post("/api/v1/orders", {
        "departure_id": dep, "contact_phone": "13812345678", "passengers": [person()]},
        token=token)
    early = await api.post(f"/api/v1/orders/{unpaid.body['order_no']}/invoice", COMPANY,
                           token=token)
    assert early.status == 409 and early.error_code == "ORDER_NOT_INVOICEABLE"
    await api.post(f"/api/v1/orders/{unpaid.body['order_no']}/cancel", {}, token=token)
    order = await issued_order(api, services, token, dep, [person("张三"), person("李四")])
    url = f"/api/v1/orders/{order['order_no']}/invoice"

    # bad input: a title too long, a company without its tax number, a malformed one
    long = await api.post(url, {**COMPANY, "title": "公" * 101}, token=token)
    assert long.status == 400 and long.body["error"]["field"] == "title"
    no_tax = await api.post(url, {"buyer_type": "company", "title": "某公司"}, token=token)
    assert no_tax.status == 422 and no_tax.error_code == "INVALID_TAX_NUMBER"
    bad_tax = await api.post(url, {**COMPANY, "tax_no": "12345"}, token=token)
    assert bad_tax.status == 422 and bad_tax.error_code == "INVALID_TAX_NUMBER"
    stranger = await member(api)
    assert (await api.post(url, COMPANY, token=stranger)).status == 404
    assert await db.invoices.count_documents({"order_no": order["order_no"]}) == 0

    asked = await api.post(url, COMPANY, token=token)
    assert asked.status == 201, asked.text
    blue = asked.body
    assert blue["status"] == "issued" and len(blue["invoice_no"]) == 20
    assert blue["total"] == order["amount"]
    assert [ln["amount"] for ln in blue["lines"]] == [t["price"] for t in sorted(
        order["tickets"], key=lambda t: t["ticket_no"])]
    assert {ln["tax_rate"] for ln in blue["lines"]} == {"免税"}
    again = await api.post(url, COMPANY, token=token)
    assert again.status == 409 and again.error_code == "INVOICE_EXISTS"
    text = await _pdf_text(api, token, blue["id"])
    for words in (blue["invoice_no"], "广州羊城科技有限公司", "91440101MA59XXXX1X", "免税",
                  capital_amount(blue["total"]), order["order_no"]):
        assert words in text, words
    hidden = await api.get(f"/api/v1/invoices/{blue['id']}.pdf", token=stranger)
    assert hidden.status == 404
    sent = json.loads((await AsyncHTTPClient().fetch(
        f"{providers.url}/_sandbox/einvoice/issued")).body)["invoices"]
    assert any(i["request_id"] == blue["id"] and i["buyer"]["title"] == COMPANY["title"]
               for i in sent)

    # a ticket refunded after invoicing: a red invoice reverses it, a new one for the rest
    first = sorted(order["tickets"], key=lambda t: t["ticket_no"])[0]
    refund = await api.post(f"/api/v1/tickets/{first['ticket_no']}/refund", {}, token=token)
    assert refund.status == 200, refund.text
    for _ in range(50):
        await services.invoices.correct()
        await services.invoices.send_requested()
        listed = await _invoices(api, token, order["order_no"])
        if len(listed) == 3 and all(i["status"] == "issued" for i in listed):
            break
        await asyncio.sleep(0.2)
    by_kind = {(i["kind"], i["current"]): i for i in listed}
    red, new = by_kind[("red", False)], by_kind[("blue", True)]
    assert by_kind[("blue", False)]["id"] == blue["id"]
    assert red["total"] == -blue["total"] and red["original_no"] == blue["invoice_no"]
    kept = refund.body["fee"]
    assert new["total"] == order["amount"] - first["price"] + kept
    assert any(ln["name"].endswith("退票费") and ln["amount"] == kept for ln in new["lines"])
    red_text = await _pdf_text(api, token, red["id"])
    assert "红字" in red_text and blue["invoice_no"] in red_text

    # finance lists and exports them
    finance = (await api.login("finance"))["token"]
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    listing = await api.get(f"/api/v1/admin/invoices?from={since.replace('+', '%2B')}",
                            token=finance)
    assert listing.status == 200
    assert {blue["id"], red["id"], new["id"]} <= {i["id"] for i in listing.body["invoices"]}
    one = await api.get(f"/api/v1/admin/invoices?from={since.replace('+', '%2B')}&limit=1"
                        "&offset=1", token=finance)  # a page of one: the second newest
    assert one.body["total"] == listing.body["total"] >= 3
    assert [i["id"] for i in one.body["invoices"]] == [listing.body["invoices"][1]["id"]]
    headers = {"Authorization": f"Bearer {finance}"}
    recent = f"?from={since.replace('+', '%2B')}"  # (a download answers 10,000 rows at most)
    got = await AsyncHTTPClient().fetch(f"{api.base_url}/api/v1/admin/invoices.csv{recent}",
                                        headers=headers)
    rows = list(csv.reader(io.StringIO(got.body.decode("utf-8-sig"))))
    numbers = {r[0]: r for r in rows[1:]}
    assert numbers[red["invoice_no"]][2] == "红字"
    assert numbers[red["invoice_no"]][7] == f"-{blue['total'] // 100}.{blue['total'] % 100:02d}"
    got = await AsyncHTTPClient().fetch(f"{api.base_url}/api/v1/admin/invoices.xlsx{recent}",
                                        headers=headers)
    sheet = load_workbook(io.BytesIO(got.body)).active
    cells = {r[0]: r for r in sheet.iter_rows(min_row=2, values_only=True)}
    assert round(cells[new["invoice_no"]][7] * 100) == new["total"]
    assert (await api.get("/api/v1/admin/invoices.csv", token=token)).status == 403


@pytest.mark.gen_test(timeout=120)
async def test_the_station_fee_has_its_own_line_where_the_rules_say_so(api: ApiClient, db,
                                                                      services) -> None:
    operator = (await api.login("operator"))["token"]
    dep = await make_departure(db, seats=5, stops=2)
    route = (await db.departures.find_one({"_id": dep}))["route_id"]
    starts = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    published = await api.post("/api/v1/admin/rules", {
        "effective_from": starts.isoformat(), "scope": {"level": "route", "ref": route},
        "note": "站务费单列", "invoice_station_fee_separately": True}, token=operator)
    assert published.status == 201, published.text
    await asyncio.sleep(max(0.0, (starts - dt.datetime.now(dt.UTC)).total_seconds()) + 0.3)
    token = await member(api)
    order = await issued_order(api, services, token, dep, [person()])
    asked = await api.post(f"/api/v1/orders/{order['order_no']}/invoice",
                           {"title": "王五"}, token=token)
    assert asked.status == 201, asked.text
    ticket = order["tickets"][0]
    assert [(ln["name"], ln["amount"]) for ln in asked.body["lines"]] == [
        ("*运输服务*旅客运输服务", ticket["price"] - ticket["station_fee"]),
        ("*运输服务*站务费", ticket["station_fee"])]
    assert asked.body["total"] == ticket["price"] and asked.body["buyer"]["type"] == "personal"

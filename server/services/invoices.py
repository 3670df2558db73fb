"""Electronic invoices (电子发票 / 报销凭证) for passengers' orders.

A passenger asks for the invoice of an issued (or partly refunded) order, with a buyer title
and, for a company, its tax number. The invoice has a line per ticket for what was paid and
kept — passenger transport, tax-exempt (免税) — the station fee (站务费) on a line of its own
where the rules say so, and the fee of a refunded ticket as 退票费. It is requested at once
and issued by the provider (``payments/invoicing.py``): the ``invoices`` job sends what is
requested (again after a failure: the provider issues each request id once) and keeps the
PDF. A refund after invoicing is corrected by the ``invoice-corrections`` job: a red-letter
invoice (红字发票) reverses the blue one, and a new blue one is requested for what is left.
Finance lists them and exports them (CSV, XLSX).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server import tables
from server.clock import LOCAL_TZ, now_ms
from server.errors import DomainError
from server.invoicing import InvoiceIssuer, InvoicingError
from server.paging import Page
from server.security.principal import FINANCE, Principal
from server.services import invoice_pdf
from server.services.audit import AuditService
from server.services.jobs import RecordFailures
from server.services.orders import OrderService
from server.services.rules import RuleService
from server.storage.invoices import InvoiceBook
from server.storage.transactions import transact

log = logging.getLogger(__name__)

INVOICEABLE = ("issued", "completed", "refunding", "refunded")
TAX_NO = re.compile(r"^[0-9A-Z]{15,20}$")  # 统一社会信用代码 (18) or an older 15/20-digit one
TRANSPORT = "*运输服务*旅客运输服务"
STATION_FEE = "*运输服务*站务费"
REFUND_FEE = "*运输服务*退票费"
STATUS_NAMES = {"requested": "待开具", "issued": "已开具", "void": "已作废"}
EXPORT_SHEET = tables.Sheet("电子发票", ["发票号码", "开票日期", "类型", "状态", "订单号", "购买方",
                                       "纳税人识别号", "价税合计（元）", "被红冲发票号码"],
                            frozenset({7}))
RETRY_AFTER = dt.timedelta(seconds=30)
MARGIN = dt.timedelta(minutes=2)  # the correction job re-reads this far behind its cursor


class InvoiceService:
    def __init__(self, db: AsyncDatabase[Any], orders: OrderService, rules: RuleService,
                 provider: InvoiceIssuer, audit: AuditService, *, font: Path,
                 seller: dict[str, str], failures: RecordFailures | None = None) -> None:
        self._db = db
        self._orders = orders
        self._rules = rules
        self._provider = provider
        self._audit = audit
        self._font = font
        self._seller = seller
        self.book = InvoiceBook(db)
        self.failures = failures or RecordFailures()

    # --- the passenger ----------------------------------------------------------------------
    async def request(self, actor: Principal, order_no: str, body: dict[str, Any]
                      ) -> dict[str, Any]:
        """The order's invoice, requested (and issued at once when the provider answers)."""
        order = await self._orders.visible(actor, order_no)
        buyer = _buyer(body)
        if order["status"] not in INVOICEABLE:
            raise DomainError("ORDER_NOT_INVOICEABLE", status=order["status"])
        lines = await self._lines(order)
        total = sum(line["amount"] for line in lines)
        if total <= 0:
            raise DomainError("ORDER_NOT_INVOICEABLE", status=order["status"])
        now = now_ms()
        invoice = {"_id": f"IV{order_no}-1", "order_no": order_no, "kind": "blue",
                   "current": True, "status": "requested", "buyer": buyer,
                   "email": body.get("email") or None, "lines": lines, "total": total,
                   "member_id": order.get("member_id"), "requested_at": now,
                   "requested_by": actor.audit_actor()}
        try:
            await self.book.add(invoice)
        except DuplicateKeyError:
            existing = await self.book.current(order_no)
            raise DomainError("INVOICE_EXISTS",
                              invoice_id=(existing or {}).get("_id", "")) from None
        await self._audit.staff_action(actor, "invoice.request", target=invoice["_id"],
                                       details={"order_no": order_no, "total": total})
        await self._send(invoice)
        return view(await self.book.get(invoice["_id"]) or invoice)

    async def of_order(self, actor: Principal, order_no: str) -> list[dict[str, Any]]:
        await self._orders.visible(actor, order_no)
        return [view(i) for i in await self.book.of_order(order_no)]

    async def pdf(self, actor: Principal, invoice_id: str) -> tuple[str, bytes]:
        """An issued invoice's PDF, to its buyer (or finance)."""
        invoice = await self.book.get(invoice_id, with_file=True)
        if invoice is None:
            raise DomainError("INVOICE_NOT_FOUND")
        if actor.role != FINANCE:  # a buyer sees the invoices of the orders it sees
            try:
                await self._orders.visible(actor, invoice["order_no"])
            except DomainError:
                raise DomainError("INVOICE_NOT_FOUND") from None
        if invoice["status"] != "issued" or not invoice.get("pdf"):
            raise DomainError("INVOICE_NOT_ISSUED", status=invoice["status"])
        return f"{invoice['invoice_no']}.pdf", bytes(invoice["pdf"])

    # --- finance ----------------------------------------------------------------------------
    async def listed(self, since: dt.datetime | None, until: dt.datetime | None,
                     status: str | None, page: Page) -> tuple[list[dict[str, Any]], int]:
        """A page of the invoices requested in a period, newest first, and how many."""
        rows, total = await self.book.listed(_period_query(since, until, status), page)
        return [view(i) for i in rows], total

    def exported(self, since: dt.datetime | None, until: dt.datetime | None,
                 status: str | None) -> tables.Source:
        """The invoices of a period as rows of a file for finance, newest first."""
        query = _period_query(since, until, status)

        async def rows() -> AsyncIterator[list[Any]]:
            async for stored in self.book.scan(query):
                i = view(stored)
                yield [i.get("invoice_no", ""), (i.get("issued_at") or "")[:10],
                       "红字" if i["kind"] == "red" else "蓝字", STATUS_NAMES[i["status"]],
                       i["order_no"], i["buyer"]["title"], i["buyer"].get("tax_no", ""),
                       i["total"], i.get("original_no", "")]

        return tables.Source(EXPORT_SHEET, "invoices", partial(self.book.count, query), rows)

    # --- the jobs ---------------------------------------------------------------------------
    async def send_requested(self, limit: int = 50) -> int:
        """Requested invoices to the provider, oldest first; the number issued."""
        issued = 0
        for invoice in await self.book.to_send(now_ms() - RETRY_AFTER, limit):
            with self.failures.record("invoices", invoice["_id"]):
                issued += await self._send(invoice)
        return issued

    async def correct(self) -> int:
        """Orders with a ticket refunded or voided since the last run whose current invoice
        no longer says what was paid: reversed by a red invoice, invoiced again for what is
        left. The number corrected."""
        since = await self.book.cursors.get("refunds")
        query: dict[str, Any] = {"refund.at": {"$gte": since - MARGIN}} if since else \
            {"refund.at": {"$exists": True}}
        tickets = await self._db.tickets.find(
            query, {"order_no": 1, "refund.at": 1}).sort("refund.at", 1).limit(1000).to_list()
        corrected = 0
        for order_no in dict.fromkeys(t["order_no"] for t in tickets):
            with self.failures.record("invoice-corrections", order_no):
                corrected += await self._correct(order_no)
        if tickets:
            await self.book.cursors.advance("refunds", tickets[-1]["refund"]["at"])
        return corrected

    async def _correct(self, order_no: str) -> bool:
        blue = await self.book.current(order_no)
        if blue is None:
            return False
        order = await self._orders.stored(order_no)
        if order is None:
            return False
        lines = await self._lines(order)
        total = sum(line["amount"] for line in lines)
        if total == blue["total"]:
            return False
        now = now_ms()
        number = int(blue["_id"].rsplit("-", 1)[1])
        red = None
        if blue["status"] == "issued":
            red = {"_id": f"{blue['_id']}-R", "order_no": order_no, "kind": "red",
                   "status": "requested", "buyer": blue["buyer"], "email": blue.get("email"),
                   "lines": [{**line, "amount": -line["amount"]} for line in blue["lines"]],
                   "total": -blue["total"], "reverses": blue["_id"],
                   "original_no": blue["invoice_no"], "member_id": blue.get("member_id"),
                   "requested_at": now, "requested_by": {"kind": "job"}}
        new_blue = None
        if total > 0:
            new_blue = {**{k: blue[k] for k in ("order_no", "buyer", "email", "member_id")},
                        "_id": f"IV{order_no}-{number + 1}", "kind": "blue", "current": True,
                        "status": "requested", "lines": lines, "total": total,
                        "replaces": blue["_id"], "requested_at": now,
                        "requested_by": {"kind": "job"}}

        async def write(session: AsyncClientSession) -> bool:
            return await self.book.replace(blue, red, new_blue, now, session)

        if not await transact(self._db, write):
            return False
        log.info("invoice corrected after a refund", extra={"fields": {
            "order_no": order_no, "was": blue["total"], "now": total}})
        for invoice in (red, new_blue):  # (a red one first: the provider wants the order)
            if invoice is not None:
                await self._send(invoice)
        return True

    async def _send(self, invoice: dict[str, Any]) -> int:
        """Ask the provider to issue it; keep the number and the PDF. 1 if issued now."""
        if invoice["kind"] == "red":
            original = await self.book.get(invoice["reverses"])
            if original is None or original["status"] != "issued":
                return 0
        request = {"request_id": invoice["_id"], "kind": invoice["kind"],
                   "buyer": invoice["buyer"], "total": invoice["total"],
                   "lines": [{k: line[k] for k in ("name", "detail", "amount", "tax_rate")}
                             for line in invoice["lines"]],
                   **({"original_no": invoice["original_no"]} if invoice["kind"] == "red"
                      else {})}
        try:
            number, at = await self._provider.issue(request)
        except InvoicingError as exc:
            await self.book.failed(invoice["_id"], str(exc), now_ms())
            return 0
        drawn = {**invoice, "invoice_no": number, "issued_at": at}
        pdf = await asyncio.get_running_loop().run_in_executor(
            None, partial(invoice_pdf.render, drawn, self._seller, self._font))
        return int(await self.book.issued(invoice["_id"], number, at, pdf) is not None)

    # --- what an order's invoice says ----------------------------------------------------------
    async def _lines(self, order: dict[str, Any]) -> list[dict[str, Any]]:
        """A line per ticket for what was paid and kept: the fare (with the station fee
        apart where the rules say so), or a refunded ticket's fee."""
        dep = await self._db.departures.find_one({"_id": order["departure_id"]}) or {}
        rules = await self._rules.for_departure(dep) if dep else None
        apart = bool(rules and rules.invoice_station_fee_separately)
        stops = {s["seq"]: s["name"] async for s in self._db.stops.find(
            {"route_id": order.get("route_id") or dep.get("route_id")}, {"seq": 1, "name": 1})}
        lines = []
        async for t in self._db.tickets.find({"order_no": order["order_no"]}).sort(
                "ticket_no", 1):
            trip = (f"{stops.get(t['from_seq'], '')}—{stops.get(t['to_seq'], '')} "
                    f"{dep.get('service_date', '')} {t['ticket_no']}")
            if t["status"] in ("refunded", "voided"):
                kept = int(t["price"]) - int((t.get("refund") or {}).get("amount", t["price"]))
                if kept > 0:
                    lines.append(_line(REFUND_FEE, trip, kept, t))
            elif t["status"] in ("issued", "picked_up", "checked_in", "refunding", "voiding",
                                 "changing"):
                fee = int(t.get("station_fee", 0)) if apart else 0
                lines.append(_line(TRANSPORT, trip, int(t["price"]) - fee, t))
                if fee:
                    lines.append(_line(STATION_FEE, trip, fee, t))
        return lines


def _line(name: str, detail: str, amount: int, ticket: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "detail": detail, "amount": amount, "tax_rate": "免税",
            "ticket_no": ticket["ticket_no"]}


def _buyer(body: dict[str, Any]) -> dict[str, str]:
    kind = body.get("buyer_type", "personal")
    title = str(body.get("title", "")).strip()
    tax_no = str(body.get("tax_no") or "").strip().upper()
    if not title:
        raise DomainError("INVOICE_TITLE_INVALID", field="title")
    if kind == "company" and not TAX_NO.match(tax_no):
        raise DomainError("INVALID_TAX_NUMBER", field="tax_no")
    if tax_no and not TAX_NO.match(tax_no):
        raise DomainError("INVALID_TAX_NUMBER", field="tax_no")
    return {"type": kind, "title": title, "tax_no": tax_no}


def _period_query(since: dt.datetime | None, until: dt.datetime | None, status: str | None
                  ) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if since or until:
        query["requested_at"] = {**({"$gte": since} if since else {}),
                                 **({"$lt": until} if until else {})}
    if status:
        query["status"] = status
    return query


def view(invoice: dict[str, Any]) -> dict[str, Any]:
    out = {"id": invoice["_id"], "order_no": invoice["order_no"], "kind": invoice["kind"],
           "status": invoice["status"], "current": bool(invoice.get("current")),
           "buyer": invoice["buyer"], "total": invoice["total"],
           "lines": [{k: line[k] for k in ("name", "detail", "amount", "tax_rate")}
                     for line in invoice["lines"]],
           "requested_at": invoice["requested_at"].astimezone(LOCAL_TZ).isoformat()}
    if invoice.get("invoice_no"):
        out["invoice_no"] = invoice["invoice_no"]
        out["issued_at"] = invoice["issued_at"].astimezone(LOCAL_TZ).isoformat()
    for key in ("original_no", "reverses", "replaces"):
        if invoice.get(key):
            out[key] = invoice[key]
    return out

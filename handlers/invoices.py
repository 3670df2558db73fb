"""Electronic invoices: a passenger asks for the invoice of an order and downloads its PDF;
finance lists and exports them."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiHandler, api, query_time, route
from handlers.exports import EXPORT, export_request
from handlers.orders import BUYERS
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DATETIME, array, obj, string
from server.security.principal import FINANCE, OPERATOR
from server.tables import FORMATS

REQUEST = obj({
    "buyer_type": string(enum=["personal", "company"], description="default personal"),
    "title": string(1, 100, description="抬头: a person's or company's name"),
    "tax_no": string(1, 20, description="纳税人识别号 (统一社会信用代码); a company's is "
                                        "required"),
    "email": string(3, 100, pattern="^[^@\\s]+@[^@\\s]+$", description="where to send it")},
    ["title"])
LINE = obj({"name": string(), "detail": string(), "amount": {"type": "integer"},
            "tax_rate": string()}, ["name", "amount", "tax_rate"])
INVOICE = obj({"id": string(), "order_no": string(), "kind": string(enum=["blue", "red"]),
               "status": string(enum=["requested", "issued", "void"]),
               "current": {"type": "boolean"},
               "buyer": obj({"type": string(), "title": string(), "tax_no": string()}),
               "total": {"type": "integer", "description": "fen (negative: a red invoice)"},
               "lines": array(LINE), "requested_at": DATETIME,
               "invoice_no": string(description="the provider's 20-digit number"),
               "issued_at": DATETIME, "original_no": string(), "reverses": string(),
               "replaces": string()},
              ["id", "order_no", "kind", "status", "total", "lines"])
INVOICES = obj({"invoices": array(INVOICE), "total": TOTAL}, ["invoices", "total"])
FILTERS = {"from": DATETIME, "to": DATETIME,
           "status": string(enum=["requested", "issued", "void"])}
LIST_QUERY = obj({**FILTERS, **PAGE_QUERY})
DOWNLOAD_LIMIT = 10_000  # rows a download answers at once; beyond, an export job
ERRORS = ("ORDER_NOT_FOUND", "ORDER_NOT_INVOICEABLE", "INVOICE_EXISTS", "INVALID_TAX_NUMBER",
          "INVOICE_TITLE_INVALID")


class OrderInvoiceHandler(ApiHandler):
    @api("Ask for the order's electronic invoice (a line per ticket for what was paid and "
         "kept; tax-exempt passenger transport); issued by the provider at once or shortly",
         roles=BUYERS, body=REQUEST, response=INVOICE, status=201, tags=("invoices",),
         idempotent=True, errors=ERRORS)
    async def post(self, order_no: str) -> None:
        self.write_json(await self.services.invoices.request(self.principal, order_no,
                                                             self.body), 201)


class OrderInvoicesHandler(ApiHandler):
    @api("The order's invoices: the current blue one, and any reversed by a red one after a "
         "refund", roles=BUYERS, response=INVOICES, tags=("invoices",),
         errors=("ORDER_NOT_FOUND",))
    async def get(self, order_no: str) -> None:
        self.write_json({"invoices": await self.services.invoices.of_order(self.principal,
                                                                           order_no)})


class InvoicePdfHandler(ApiHandler):
    @api("An issued invoice as PDF", roles=(*BUYERS, FINANCE), tags=("invoices",),
         content_type="application/pdf", errors=("INVOICE_NOT_FOUND", "INVOICE_NOT_ISSUED"))
    async def get(self, invoice_id: str) -> None:
        name, data = await self.services.invoices.pdf(self.principal, invoice_id)
        self.attachment(name, "application/pdf", data)


def _period(query: dict[str, Any]) -> tuple[Any, Any]:
    return query_time(query, "from"), query_time(query, "to")


class AdminInvoicesHandler(ApiHandler):
    @api("Invoices requested in a period, newest first", roles=(FINANCE, OPERATOR),
         query=LIST_QUERY, response=INVOICES, tags=("invoices",))
    async def get(self) -> None:
        since, until = _period(self.query)
        rows, total = await self.services.invoices.listed(
            since, until, self.query.get("status"), Page.of(self.query, 100))
        self.write_json({"invoices": rows, "total": total})


class InvoiceCsvHandler(ApiHandler):
    @api(f"Invoices of a period as CSV (UTF-8 with a BOM), up to {DOWNLOAD_LIMIT:,} rows; "
         "more as an export job", roles=(FINANCE,), query=LIST_QUERY, tags=("invoices",),
         content_type="text/csv", errors=("EXPORT_TOO_LARGE",))
    async def get(self) -> None:
        await _download(self, "csv")


class InvoiceXlsxHandler(ApiHandler):
    @api(f"Invoices of a period as XLSX, up to {DOWNLOAD_LIMIT:,} rows; more as an export job",
         roles=(FINANCE,), query=LIST_QUERY, tags=("invoices",), content_type=FORMATS["xlsx"],
         errors=("EXPORT_TOO_LARGE",))
    async def get(self) -> None:
        await _download(self, "xlsx")


class InvoiceExportsHandler(ApiHandler):
    @api("Export the invoices of a period as a job (any number of rows): answered at once "
         "with the export, whose progress and file are read under /api/v1/admin/exports",
         roles=(FINANCE,), body=export_request(FILTERS), response=EXPORT, status=202,
         tags=("invoices", "exports"), errors=("INVALID_VALUE", "EXPORTS_BUSY"))
    async def post(self) -> None:
        since, until = _period(self.body)
        source = self.services.invoices.exported(since, until, self.body.get("status"))
        self.write_json(await self.services.exports.start(
            self.principal, "invoices", source, self.body.get("format", "xlsx"),
            {k: v for k, v in self.body.items() if k != "format"}), 202)


async def _download(handler: ApiHandler, fmt: str) -> None:
    """A small period's file in the answer itself (more rows: POST …/invoices/exports)."""
    since, until = _period(handler.query)
    source = handler.services.invoices.exported(since, until, handler.query.get("status"))
    data = await handler.services.exports.at_once(source, fmt, DOWNLOAD_LIMIT)
    handler.attachment(f"invoices.{fmt}", FORMATS[fmt], data)


default_handlers = [
    route("/api/v1/orders/{order_no}/invoice", OrderInvoiceHandler),
    route("/api/v1/orders/{order_no}/invoices", OrderInvoicesHandler),
    route("/api/v1/invoices/{invoice_id}.pdf", InvoicePdfHandler),
    route("/api/v1/admin/invoices", AdminInvoicesHandler),
    route("/api/v1/admin/invoices.csv", InvoiceCsvHandler),
    route("/api/v1/admin/invoices.xlsx", InvoiceXlsxHandler),
    route("/api/v1/admin/invoices/exports", InvoiceExportsHandler),
]

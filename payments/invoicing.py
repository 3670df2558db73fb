"""The electronic-invoice provider (电子发票服务平台): Keyun sends each invoice's data, the
provider issues it under the platform's tax registration and answers with its number.

    POST {base}/einvoice/v1/invoices   Authorization: Bearer <key>
    {"request_id", "kind": "blue" | "red", "buyer": {"type", "title", "tax_no"},
     "lines": [{"name", "detail", "amount", "tax_rate"}], "total", "original_no"?}
    → {"invoice_no": 20 digits, "issued_at": RFC 3339}

``request_id`` is Keyun's invoice id: the provider issues each once (a repeated request
gets the first answer), so sending again after a lost answer is safe. A red-letter invoice
(红字发票, ``kind: "red"``) names the blue one it reverses in ``original_no``; its amounts
are negative.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from server.invoicing import InvoiceIssuer, InvoicingError

log = logging.getLogger(__name__)


class InvoiceProvider(InvoiceIssuer):
    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0) -> None:
        self._url = base_url.rstrip("/") + "/einvoice/v1/invoices"
        self._key = api_key
        self._timeout = timeout

    async def issue(self, request: dict[str, Any]) -> tuple[str, dt.datetime]:
        """The invoice's number and time of issue."""
        http = HTTPRequest(self._url, method="POST", body=json.dumps(request, ensure_ascii=False),
                           headers={"Authorization": f"Bearer {self._key}",
                                    "Content-Type": "application/json; charset=utf-8"},
                           request_timeout=self._timeout, connect_timeout=self._timeout)
        try:
            response = await AsyncHTTPClient().fetch(http)
            answer = json.loads(response.body)
            number = str(answer["invoice_no"])
            issued = dt.datetime.fromisoformat(answer["issued_at"])
        except (HTTPClientError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("invoice %s not issued: %s", request.get("request_id"),
                        type(exc).__name__)
            raise InvoicingError(type(exc).__name__) from None
        if not (number.isdigit() and len(number) == 20) or issued.tzinfo is None:
            raise InvoicingError("the provider's answer is not an invoice number and time")
        return number, issued

"""What the invoice capability needs from an electronic-invoice provider (implemented by
``payments/invoicing.py``): issue one invoice, once per request id, and say its number."""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol


class InvoicingError(Exception):
    """The provider did not issue the invoice (unreachable, refused, or answered garbage);
    it is sent again later."""


class InvoiceIssuer(Protocol):
    async def issue(self, request: dict[str, Any]) -> tuple[str, dt.datetime]:
        """The invoice's number and time of issue (InvoicingError if not issued)."""
        ...

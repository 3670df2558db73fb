"""Partner webhooks: every status change of a partner's order, and every end of one of its
tickets (refunded, voided, changed), is POSTed as JSON to the partner's ``webhook_url``,
signed like the partner's own requests (SPEC §4b: ``X-Keyun-Key``, ``X-Keyun-Timestamp``,
``X-Keyun-Nonce``, ``X-Keyun-Signature`` over the canonical request) with its newest key.
A delivery is retried with back-off (2 s, 4 s, 8 s … capped at an hour, 16 attempts, about
nine hours) until the partner answers 2xx; the delivery id (``X-Keyun-Delivery``, also in
the body) names the event, so a partner that sees one twice knows it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from server.clock import LOCAL_TZ
from server.security import signing
from server.security.pii import PiiVault
from server.storage.partners import PartnerRecords
from server.storage.webhooks import WebhookDeliveries

log = logging.getLogger(__name__)

ATTEMPTS = 16
FIRST_WAIT, LONGEST_WAIT = 2.0, 3600.0
TIMEOUT = 10.0


def backoff(attempts: int) -> dt.timedelta | None:
    """The wait after the ``attempts``-th failure (None: give up)."""
    if attempts >= ATTEMPTS:
        return None
    return dt.timedelta(seconds=min(LONGEST_WAIT, FIRST_WAIT * 2 ** (attempts - 1)))


def loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookService:
    def __init__(self, db: AsyncDatabase[Any], vault: PiiVault,
                 allow_loopback_http: bool = False) -> None:
        self._deliveries = WebhookDeliveries(db)
        self._partners = PartnerRecords(db)
        self._vault = vault
        self._loopback_http = allow_loopback_http

    # --- what happened ------------------------------------------------------------------------
    async def order_changed(self, order: dict[str, Any], session: AsyncClientSession | None
                            = None) -> None:
        """A partner's order moved (its newest history entry says how)."""
        if not order.get("partner_id"):
            return
        entry = order["history"][-1]
        await self._deliveries.enqueue(
            f"wh_{order['order_no']}_{len(order['history'])}", order["partner_id"],
            "order.status", {"order_no": order["order_no"], "status": order["status"],
                             "from": entry.get("from"), "reason": entry.get("reason", ""),
                             "amount": order["amount"]}, entry["at"], session)

    async def ticket_ended(self, order: dict[str, Any], ticket: dict[str, Any], status: str,
                           amount: int, at: dt.datetime,
                           session: AsyncClientSession | None = None) -> None:
        """A partner's ticket was refunded, voided or changed."""
        if not order.get("partner_id"):
            return
        await self._deliveries.enqueue(
            f"wh_{ticket['ticket_no']}_{status}", order["partner_id"], f"ticket.{status}",
            {"order_no": order["order_no"], "ticket_no": ticket["ticket_no"],
             "status": status, "refund_amount": amount}, at, session)

    # --- delivering ---------------------------------------------------------------------------
    async def run(self, limit: int = 50) -> int:
        """Deliver what is due (a job of every process); how many were attempted."""
        done = 0
        while done < limit:
            delivery = await self._deliveries.claim(dt.datetime.now(dt.UTC))
            if delivery is None:
                break
            await self._deliver(delivery)
            done += 1
        return done

    async def _deliver(self, delivery: dict[str, Any]) -> None:
        now = dt.datetime.now(dt.UTC)
        partner = await self._partners.get(delivery["partner_id"])
        key = await self._deliveries.signing_key(delivery["partner_id"])
        url = (partner or {}).get("webhook_url", "")
        problem = "no webhook_url" if not url else "no live key" if key is None else \
            "" if url.startswith("https://") or (self._loopback_http and loopback(url)) \
            else "not https"
        if problem:
            await self._failed(delivery, problem, now)
            return
        body = json.dumps({"id": delivery["_id"], "event": delivery["event"],
                           "at": delivery["at"].astimezone(LOCAL_TZ).isoformat(),
                           "data": delivery["data"]}, ensure_ascii=False).encode()
        parts = urlsplit(url)
        timestamp, nonce = str(int(time.time())), secrets.token_hex(12)
        text = signing.string_to_sign("POST", parts.path or "/", parts.query, timestamp,
                                      nonce, body)
        secret = self._vault.decrypt("partner_key", key["secret_enc"])  # type: ignore[index]
        headers = {"Content-Type": "application/json", "X-Keyun-Key": key["_id"],  # type: ignore[index]
                   "X-Keyun-Timestamp": timestamp, "X-Keyun-Nonce": nonce,
                   "X-Keyun-Signature": signing.signature(secret, text),
                   "X-Keyun-Event": delivery["event"], "X-Keyun-Delivery": delivery["_id"]}
        try:
            response = await AsyncHTTPClient().fetch(
                url, method="POST", body=body, headers=headers, request_timeout=TIMEOUT,
                follow_redirects=False, raise_error=False)
        except (HTTPClientError, OSError) as exc:
            await self._failed(delivery, f"{type(exc).__name__}: {exc}", now)
            return
        if 200 <= response.code < 300:
            await self._deliveries.delivered(delivery["_id"], response.code, now)
        else:
            await self._failed(delivery, f"HTTP {response.code}", now)

    async def _failed(self, delivery: dict[str, Any], error: str, now: dt.datetime) -> None:
        wait = backoff(delivery["attempts"] + 1)
        await self._deliveries.failed_attempt(delivery["_id"], error,
                                              now + wait if wait else None, now)
        log.warning("webhook not delivered", extra={"fields": {
            "delivery": delivery["_id"], "attempts": delivery["attempts"] + 1,
            "error": error[:120], "gave_up": wait is None}})

"""Partners (第三方合作方): the registry, API keys shown once, and who is calling the signed
partner API. A request is the partner's only when its key is active, its timestamp within
300 s of our clock, its nonce new (kept in Redis for twice the window) and its signature
right (``server.security.signing``)."""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from server.clock import day_start, local_today
from server.errors import DomainError
from server.paging import Page
from server.security import signing
from server.security.pii import PiiVault
from server.security.principal import PARTNER, Principal
from server.services.audit import AuditService
from server.services.webhooks import loopback
from server.storage.attempts import WindowLimit
from server.storage.orders import OrderBook
from server.storage.partners import PartnerRecords, nonce_key


def _check_webhook(url: str, allow_loopback_http: bool = False) -> None:
    """An https URL with a host (order events are signed, but never sent in clear); in
    development, http to this machine too (a partner's test receiver)."""
    try:
        parts = urlsplit(url)
        ok = (parts.scheme == "https" and bool(parts.hostname)) or (
            allow_loopback_http and parts.scheme == "http" and loopback(url))
    except ValueError:  # e.g. "https://[" (an unclosed IPv6 literal)
        ok = False
    if not ok:
        raise DomainError("WEBHOOK_URL_INVALID", field="webhook_url")


RATE_PER_MINUTE = 600  # signed requests a partner may make a minute, unless set otherwise
EDITABLE = ("name", "status", "credit_limit", "webhook_url", "rate_per_minute", "daily_quota")


def public_partner(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], "code": doc["code"], "name": doc["name"],
            "status": doc["status"], "webhook_url": doc.get("webhook_url", ""),
            "balance": int(doc.get("balance", 0)), "credit_limit": int(doc["credit_limit"]),
            "rate_per_minute": int(doc.get("rate_per_minute", RATE_PER_MINUTE)),
            "daily_quota": doc.get("daily_quota")}


class PartnerService:
    def __init__(self, db: Any, redis: Redis, vault: PiiVault, audit: AuditService,
                 allow_loopback_http: bool = False) -> None:
        self._loopback_http = allow_loopback_http
        self._db = db
        self._records = PartnerRecords(db)
        self._redis = redis
        self._vault = vault
        self._audit = audit

    # --- the registry (operator) --------------------------------------------------------------
    async def create(self, actor: Principal, code: str, name: str, credit_limit: int,
                     webhook_url: str = "") -> dict[str, Any]:
        if webhook_url:
            _check_webhook(webhook_url, self._loopback_http)
        doc = {"_id": "ptn_" + uuid.uuid4().hex[:16], "code": code, "name": name,
               "status": "active", "credit_limit": credit_limit, "balance": 0,
               "webhook_url": webhook_url, "created_at": dt.datetime.now(dt.UTC)}
        if not await self._records.create(doc):
            raise DomainError("PARTNER_EXISTS", field="code")
        await self._audit.record(actor, "partner.create", target=doc["_id"],
                                 details={"code": code, "credit_limit": credit_limit})
        return public_partner(doc)

    async def list(self, page: Page) -> tuple[list[dict[str, Any]], int]:
        """A page of partners, oldest first, and how many there are."""
        rows, total = await self._records.page(page)
        return [public_partner(p) for p in rows], total

    async def update(self, actor: Principal, partner_id: str, fields: dict[str, Any]
                     ) -> dict[str, Any]:
        """Suspend or resume a partner, change its limits, credit or webhook."""
        if fields.get("webhook_url"):
            _check_webhook(fields["webhook_url"], self._loopback_http)
        done = await self._records.update(partner_id, {k: fields[k] for k in EDITABLE
                                                       if k in fields})
        if done is None:
            raise DomainError("PARTNER_NOT_FOUND")
        await self._audit.record(actor, "partner.update", target=partner_id, details=fields)
        return public_partner(done)

    async def keys(self, partner_id: str) -> list[dict[str, Any]]:
        return [{"key_id": k["_id"], "created_at": k["created_at"]}
                for k in await self._records.live_keys(partner_id)]

    async def revoke_key(self, actor: Principal, partner_id: str, key_id: str) -> None:
        """Retire a key: requests signed with it are refused from now on."""
        if not await self._records.revoke_key(partner_id, key_id, dt.datetime.now(dt.UTC)):
            raise DomainError("KEY_NOT_FOUND")
        await self._audit.record(actor, "partner.key_revoked", target=partner_id,
                                 details={"key_id": key_id})

    async def may_sell(self, partner_id: str, tickets: int) -> None:
        """Refuse an order beyond the partner's daily ticket quota."""
        partner = await self._records.get(partner_id)
        quota = (partner or {}).get("daily_quota")
        if quota is None:
            return
        sold = await OrderBook(self._db).live_tickets(
            {"partner_id": partner_id, "created_at": {"$gte": day_start(local_today())}})
        if sold + tickets > quota:
            raise DomainError("PARTNER_QUOTA_EXCEEDED", left=max(0, quota - sold))

    async def issue_key(self, actor: Principal, partner_id: str) -> dict[str, Any]:
        """A new API key; its secret is in this answer only (kept sealed, never shown
        again)."""
        if await self._records.get(partner_id) is None:
            raise DomainError("PARTNER_NOT_FOUND")
        if len(await self._records.live_keys(partner_id)) >= 2:
            raise DomainError("KEY_LIMIT")  # rotation: new key live, old one retired next
        key_id, secret = "pk_" + secrets.token_hex(8), secrets.token_urlsafe(32)
        await self._records.add_key({
            "_id": key_id, "partner_id": partner_id, "status": "active",
            "secret_enc": self._vault.encrypt("partner_key", secret),
            "created_at": dt.datetime.now(dt.UTC)})
        await self._audit.record(actor, "partner.key_issued", target=partner_id,
                                 details={"key_id": key_id})
        return {"key_id": key_id, "secret": secret}

    # --- who is calling -----------------------------------------------------------------------
    async def authenticate(self, method: str, path: str, query: str,
                           headers: dict[str, str], body: bytes) -> Principal:
        key_id = headers.get("X-Keyun-Key", "")
        timestamp = headers.get("X-Keyun-Timestamp", "")
        nonce = headers.get("X-Keyun-Nonce", "")
        given = headers.get("X-Keyun-Signature", "")
        if not (key_id and timestamp and nonce and given):
            raise DomainError("SIGNATURE_INVALID", "Send X-Keyun-Key, X-Keyun-Timestamp, "
                              "X-Keyun-Nonce and X-Keyun-Signature.")
        if not timestamp.isdigit() or \
                abs(time.time() - int(timestamp)) > signing.WINDOW_SECONDS:
            raise DomainError("TIMESTAMP_OUT_OF_WINDOW")
        if not 8 <= len(nonce) <= 64:
            raise DomainError("SIGNATURE_INVALID", "X-Keyun-Nonce: 8 to 64 characters.")
        key = await self._records.key(key_id)
        text = signing.string_to_sign(method, path, query, timestamp, nonce, body)
        if key is None or not signing.matches(
                self._vault.decrypt("partner_key", key["secret_enc"]), text, given):
            raise DomainError("SIGNATURE_INVALID")
        partner = await self._records.get(key["partner_id"])
        if partner is None:
            raise DomainError("SIGNATURE_INVALID")
        if partner["status"] != "active":
            raise DomainError("PARTNER_SUSPENDED")
        limit = WindowLimit(self._redis, "partner", int(partner.get(
            "rate_per_minute", RATE_PER_MINUTE)), 60)
        if (await limit.count(partner["_id"]))[0] > limit.limit:
            raise DomainError("PARTNER_RATE_LIMITED",
                              retry_after=await limit.wait(partner["_id"]) or 1)
        # a genuine request seen before is a replay: only the first counts
        if not await self._redis.set(nonce_key(key_id, nonce), 1, nx=True,
                                     ex=2 * signing.WINDOW_SECONDS):
            raise DomainError("NONCE_REUSED")
        return Principal(kind="partner", id=partner["_id"], role=PARTNER,
                         username=partner["code"])

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

from server.errors import DomainError
from server.security import signing
from server.security.pii import PiiVault
from server.security.principal import PARTNER, Principal
from server.services.audit import AuditService
from server.services.webhooks import loopback
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


def public_partner(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], "code": doc["code"], "name": doc["name"],
            "status": doc["status"], "webhook_url": doc.get("webhook_url", ""),
            "balance": int(doc.get("balance", 0)), "credit_limit": int(doc["credit_limit"])}


class PartnerService:
    def __init__(self, db: Any, redis: Redis, vault: PiiVault, audit: AuditService,
                 allow_loopback_http: bool = False) -> None:
        self._loopback_http = allow_loopback_http
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

    async def list(self) -> list[dict[str, Any]]:
        return [public_partner(p) for p in await self._records.all()]

    async def issue_key(self, actor: Principal, partner_id: str) -> dict[str, Any]:
        """A new API key; its secret is in this answer only (kept sealed, never shown
        again)."""
        if await self._records.get(partner_id) is None:
            raise DomainError("PARTNER_NOT_FOUND")
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
        if partner is None or partner["status"] != "active":
            raise DomainError("SIGNATURE_INVALID", "This partner is suspended.")
        # a genuine request seen before is a replay: only the first counts
        if not await self._redis.set(nonce_key(key_id, nonce), 1, nx=True,
                                     ex=2 * signing.WINDOW_SECONDS):
            raise DomainError("NONCE_REUSED")
        return Principal(kind="partner", id=partner["_id"], role=PARTNER,
                         username=partner["code"])

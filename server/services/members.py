"""Members (passengers with an account): mini-program and SMS sign-in, frequent passengers.

- Mini-program: the ``code`` from ``wx.login()`` is exchanged for an openid through WeChat's
  code-to-session API with wechatpy (synchronous, so it runs in the executor).
- App: a six-digit SMS code, valid five minutes, single use (checked and deleted in one
  Redis script), at most five tries; sending is limited per phone (one a minute, ten a day)
  and per address (twenty an hour).
- Phones and ID numbers are stored encrypted with a blind index (``server.security.pii``) and
  leave this module masked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
import secrets
import unicodedata
import uuid
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from server.context import client_ip_var
from server.errors import DomainError
from server.miniprogram import wechat_client
from server.outbox import SmsError, SmsProvider
from server.security.pii import PiiVault, mask_id, mask_phone
from server.security.principal import PASSENGER, Principal
from server.services.audit import AuditService
from server.services.auth import AuthService
from server.services.realname import id_index, validate
from server.storage.attempts import WindowLimit
from server.storage.members import MemberRecords, sign_in_code_key

log = logging.getLogger(__name__)

PHONE = re.compile(r"^1[3-9][0-9]{9}$")
CODE_TTL = 300
SEND_INTERVAL = 60
SENDS_PER_DAY = 10
SENDS_PER_IP_HOUR = 20
MAX_TRIES = 5
MAX_PASSENGERS = 15

_CHECK_CODE = """
local h = redis.call('HGET', KEYS[1], 'hash')
if not h then return 0 end
local tries = redis.call('HINCRBY', KEYS[1], 'tries', 1)
if tries > tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]); return -1 end
if h == ARGV[1] then redis.call('DEL', KEYS[1]); return 1 end
return 0
"""


def normalize_phone(phone: str) -> str:
    value = re.sub(r"[\s-]", "", unicodedata.normalize("NFKC", phone or "")).removeprefix("+86")
    if not PHONE.fullmatch(value):
        raise DomainError("INVALID_PHONE", field="phone")
    return value


class WeChatLogin:
    """code → openid through wechatpy, against the configured API base (real or sandbox)."""

    def __init__(self, appid: str, secret: str, api_base: str) -> None:
        self._appid, self._secret, self._base = appid, secret, api_base.rstrip("/")
        self._client: Any = None

    def _exchange(self, code: str) -> str:
        from wechatpy.exceptions import WeChatClientException

        if self._client is None:
            self._client = wechat_client(self._appid, self._secret, self._base)
        try:
            result = self._client.wxa.code_to_session(code)
        except WeChatClientException as exc:
            if exc.errcode in (40029, 40163, 40226):
                raise DomainError("WECHAT_CODE_INVALID") from None
            raise DomainError("WECHAT_UNAVAILABLE", detail=str(exc.errcode)) from None
        openid = result.get("openid") if isinstance(result, dict) else None
        if not openid:
            raise DomainError("WECHAT_UNAVAILABLE")
        return str(openid)

    async def openid(self, code: str) -> str:
        if not self._base:
            raise DomainError("WECHAT_UNAVAILABLE", detail="no WeChat API configured")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._exchange, code)
        except DomainError:
            raise
        except Exception as exc:  # requests' connection errors and the like
            log.warning("wechat code2session failed: %s", type(exc).__name__)
            raise DomainError("WECHAT_UNAVAILABLE") from None


class MemberService:
    def __init__(self, db: AsyncDatabase[Any], redis: Redis, vault: PiiVault,
                 auth: AuthService, sms: SmsProvider, wechat: WeChatLogin,
                 audit: AuditService) -> None:
        self._db = db
        self._audit = audit
        self._redis = redis
        self.vault = vault
        self._auth = auth
        self._sms = sms
        self._wechat = wechat
        self._check_code = redis.register_script(_CHECK_CODE)
        self._records = MemberRecords(db)
        self._sms_interval = WindowLimit(redis, "sms-phone-minute", 1, SEND_INTERVAL)
        self._sms_per_phone = WindowLimit(redis, "sms-phone-day", SENDS_PER_DAY, 86400)
        self._sms_per_ip = WindowLimit(redis, "sms-ip-hour", SENDS_PER_IP_HOUR, 3600)

    # --- sign-in --------------------------------------------------------------------------
    async def wechat_login(self, code: str) -> dict[str, Any]:
        openid = await self._wechat.openid(code)
        member = await self._member_by("openid", openid, {"openid": openid})
        return await self._tokens(member)

    async def sms_send(self, phone: str) -> dict[str, Any]:
        phone = normalize_phone(phone)
        index = self.vault.index("phone", phone)
        ip = client_ip_var.get() or "-"
        if (await self._sms_interval.count(index))[0] > 1:  # one a minute, counted first
            raise DomainError("SMS_TOO_FREQUENT",
                              retry_after=max(1, await self._sms_interval.wait(index)))
        over = max(await self._sms_per_phone.blocked(index), await self._sms_per_ip.blocked(ip))
        if over:
            raise DomainError("SMS_TOO_FREQUENT", retry_after=over)
        await self._sms_per_phone.count(index)
        await self._sms_per_ip.count(ip)
        code = f"{secrets.randbelow(10**6):06d}"
        key = sign_in_code_key(index)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"hash": _code_hash(index, code), "tries": 0})
        pipe.expire(key, CODE_TTL)
        await pipe.execute()
        try:
            await self._sms.send(phone, "login_code", {"code": code, "minutes": CODE_TTL // 60})
        except SmsError:
            await self._redis.delete(key)
            await self._sms_interval.clear(index)  # not sent: the phone may ask again
            raise DomainError("SERVICE_UNAVAILABLE", "The SMS could not be sent; try again.") \
                from None
        return {"sent": True, "expires_in": CODE_TTL, "retry_after": SEND_INTERVAL}

    async def sms_login(self, phone: str, code: str) -> dict[str, Any]:
        phone = normalize_phone(phone)
        index = self.vault.index("phone", phone)
        ok = await self._check_code(keys=[sign_in_code_key(index)],
                                    args=[_code_hash(index, code.strip()), MAX_TRIES])
        if ok != 1:
            raise DomainError("SMS_CODE_INVALID")
        member = await self._member_by("phone_index", index, {
            "phone_index": index, "phone_enc": self.vault.encrypt("phone", phone),
            "phone_masked": mask_phone(phone)})
        return await self._tokens(member)

    async def _member_by(self, field: str, value: str, fields: dict[str, Any]
                         ) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        for _ in range(2):  # a concurrent first sign-in may win the insert: read it then
            try:
                return await self._records.signed_in(field, value, fields, now)
            except DuplicateKeyError:
                continue
        raise DomainError("SERVICE_UNAVAILABLE")

    async def _tokens(self, member: dict[str, Any]) -> dict[str, Any]:
        if member.get("status") != "active":
            raise DomainError("ACCOUNT_DISABLED")
        principal = Principal(kind="member", id=member["_id"], role=PASSENGER)
        return {**await self._auth.issue_tokens(principal), "member": public_member(member)}

    async def get(self, member_id: str) -> dict[str, Any]:
        member = await self._db.members.find_one({"_id": member_id})
        if member is None:
            raise DomainError("NOT_FOUND")
        return public_member(member)

    # --- frequent passengers (常用乘车人) ---------------------------------------------------
    async def passengers(self, member_id: str) -> list[dict[str, Any]]:
        cursor = self._db.passengers.find({"member_id": member_id}).sort("created_at", 1)
        return [public_passenger(p) async for p in cursor]

    async def add_passenger(self, member_id: str, *, name: str, id_type: str, id_no: str,
                            ticket_type: str = "adult", phone: str | None = None
                            ) -> dict[str, Any]:
        document = validate(id_type, id_no)
        if await self._db.passengers.count_documents({"member_id": member_id}) \
                >= MAX_PASSENGERS:
            raise DomainError("TOO_MANY_PASSENGERS", limit=MAX_PASSENGERS)
        doc: dict[str, Any] = {
            "_id": "psg_" + uuid.uuid4().hex[:20], "member_id": member_id,
            "name": name.strip(), "id_type": document.id_type,
            "id_no_enc": self.vault.encrypt("id_no", document.id_no),
            "id_no_index": id_index(self.vault, document),
            "id_no_masked": mask_id(document.id_no), "ticket_type": ticket_type,
            "created_at": dt.datetime.now(dt.UTC)}
        if phone:
            phone = normalize_phone(phone)
            doc["phone_enc"] = self.vault.encrypt("phone", phone)
            doc["phone_masked"] = mask_phone(phone)
        if not await self._records.add_passenger(doc):
            raise DomainError("PASSENGER_EXISTS")
        return public_passenger(doc)

    async def delete_passenger(self, member_id: str, passenger_id: str) -> None:
        if not await self._records.remove_passenger(member_id, passenger_id):
            # someone else's looks the same as none: 404
            raise DomainError("PASSENGER_NOT_FOUND")

    async def passenger_document(self, member_id: str, passenger_id: str
                                 ) -> tuple[dict[str, Any], str]:
        """A frequent passenger with the clear ID number (for booking only)."""
        doc = await self._db.passengers.find_one({"_id": passenger_id, "member_id": member_id})
        if doc is None:
            raise DomainError("PASSENGER_NOT_FOUND")
        return doc, self.vault.decrypt("id_no", doc["id_no_enc"])

    # --- closing an account (PIPL: the right to delete) ----------------------------------------
    async def close_account(self, member: Principal) -> dict[str, Any]:
        """Close the caller's account: sign-in identities, profile and frequent passengers are
        deleted and every sign-in ends. Refused while a trip is open (unpaid, paid and not
        issued, a refund under way, a ticket for a bus not yet gone): the passenger would
        lose the way to it. Orders and tickets stay, as the real-name rules keep trip records
        for at least a year; the retention job anonymizes them after that."""
        now = dt.datetime.now(dt.UTC)
        open_orders = await self._open_orders(member.id, now)
        if open_orders:
            raise DomainError("ACCOUNT_HAS_OPEN_TRIPS", orders=open_orders[:20])
        removed = await self._close(member.id, member, "member.closed", now)
        return {"closed": True, "passengers_deleted": removed}

    async def close_dormant(self, before: dt.datetime, actor: dict[str, Any], *,
                            now: dt.datetime, limit: int = 500) -> int:
        """Close the accounts not used since ``before`` — no sign-in, no token refreshed, no
        order — as their owners could (the retention job); how many were closed."""
        closed = 0
        async for member in self._db.members.find(
                {"status": "active", "last_login_at": {"$lt": before}}, {"_id": 1}
                ).limit(limit):
            member_id = member["_id"]
            used = [doc["created_at"] for doc in await asyncio.gather(
                self._db.refresh_tokens.find_one(
                    {"subject.id": member_id, "created_at": {"$gte": before}},
                    {"created_at": 1}, sort=[("created_at", -1)]),
                self._db.orders.find_one({"member_id": member_id, "created_at": {"$gte": before}},
                                         {"created_at": 1}, sort=[("created_at", -1)]))
                    if doc]
            if used:  # kept signed in by refreshing, or ordering: in use after all
                await self._records.seen(member_id, max(used))
                continue
            if await self._open_orders(member_id, now):
                continue
            await self._close(member_id, actor, "member.closed_dormant", now)
            closed += 1
        return closed

    async def _close(self, member_id: str, actor: Principal | dict[str, Any], action: str,
                     now: dt.datetime) -> int:
        """Identities, profile and frequent passengers deleted, sign-ins ended, audited;
        how many frequent passengers there were."""
        removed = await self._records.close(member_id, now)
        await self._auth.end_sign_ins(member_id)
        await self._audit.record(actor, action, target=member_id,
                                 details={"passengers_deleted": removed})
        log.info("member account closed", extra={"fields": {"member": member_id,
                                                            "action": action}})
        return removed

    async def _open_orders(self, member_id: str, now: dt.datetime) -> list[str]:
        busy = sorted(await self._db.orders.distinct("order_no", {
            "member_id": member_id, "status": {"$in": ["pending_payment", "waitlisted", "paid",
                                                       "refunding", "failed"]}}))
        sold = await self._db.orders.distinct("order_no", {"member_id": member_id,
                                                           "status": "issued"})
        if not sold:
            return busy
        live = await self._db.tickets.find(
            {"order_no": {"$in": sold}, "status": {"$in": list(UNFINISHED_TICKETS)}},
            {"order_no": 1, "departure_id": 1}).to_list()
        ahead = set(await self._db.departures.distinct("_id", {
            "_id": {"$in": sorted({t["departure_id"] for t in live})},
            "departs_at": {"$gt": now}, "status": {"$ne": "cancelled"}})) if live else set()
        return busy + sorted({t["order_no"] for t in live if t["departure_id"] in ahead})


# tickets that still take someone somewhere, or whose refund, void or change is under way
UNFINISHED_TICKETS = ("held", "issued", "picked_up", "refunding", "voiding", "changing")


def _code_hash(index: str, code: str) -> str:
    return hashlib.sha256(f"{index}:{code}".encode()).hexdigest()


def public_member(member: dict[str, Any]) -> dict[str, Any]:
    return {"id": member["_id"], "phone": member.get("phone_masked"),
            "wechat": bool(member.get("openid")), "nickname": member.get("nickname", ""),
            "created_at": member["created_at"]}


def public_passenger(doc: dict[str, Any]) -> dict[str, Any]:
    out = {"id": doc["_id"], "name": doc["name"], "id_type": doc["id_type"],
           "id_no": doc["id_no_masked"], "ticket_type": doc.get("ticket_type", "adult")}
    if doc.get("phone_masked"):
        out["phone"] = doc["phone_masked"]
    return out

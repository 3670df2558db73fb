"""The notice dispatcher: sends what ``server.outbox.NoticeOutbox`` queued.

Each notice is claimed by one worker (pending → sending), sent by WeChat subscribe message
when the passenger signed in with WeChat and the kind has a template, else — or when WeChat
does not deliver — by SMS to the order's contact phone, then marked sent. A failure of both
puts it back with back-off (5 s, 10 s, 20 s … up to six attempts, then ``failed`` for an
operator). A worker that died mid-send leaves a claim that is taken again after a minute;
the SMS carries the notice's id as the provider's ``out_id`` so that retry does not send it
twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ
from server.logs import mask_pii
from server.outbox import SmsError, SmsProvider, SubscribeMessageError, SubscribeMessenger
from server.security.pii import PiiVault
from server.services.jobs import RecordFailures

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
BACKOFF = dt.timedelta(seconds=5)
CLAIM_TIMEOUT = dt.timedelta(minutes=1)


def parse_templates(text: str) -> dict[str, str]:
    """``kind=id,kind=id`` → {kind: id}."""
    out = {}
    for part in text.split(","):
        kind, _, template = part.partition("=")
        if kind.strip() and template.strip():
            out[kind.strip()] = template.strip()
    return out


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}元"


def _local(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")
    try:
        return dt.datetime.fromisoformat(str(value)).astimezone(LOCAL_TZ).strftime(
            "%Y-%m-%d %H:%M")
    except ValueError:
        return str(value)


def render(kind: str, order: dict[str, Any], departure: dict[str, Any], route: str,
           params: dict[str, Any]) -> dict[str, str]:
    """The values a notice shows, by the names both the SMS template and the subscribe
    message template use."""
    departs = _local(departure.get("departs_at", ""))
    base = {"order_no": order["order_no"], "route": route[:20], "departs_at": departs}
    if kind == "ticket_issued":
        return {**base, "tickets": str(len(params.get("tickets", [])))}
    if kind == "refund_done":
        return {**base, "amount": _yuan(int(params.get("amount", 0)))}
    if kind == "departure_changed":
        what = {"departure_time": f"发车时间改为{_local(params.get('after'))}",
                "withdrawn": "班次已取消"}.get(params.get("change", ""))
        if what is None:
            what = "班次已取消" if params.get("after") == "cancelled" else \
                f"班次状态：{params.get('after')}"
        return {**base, "change": what[:20]}
    if kind == "payment_expiring":
        return {**base, "expires_at": _local(params.get("expires_at", ""))}
    if kind == "pay_link":  # a phone booking: pay from the link before it lapses
        return {**base, "amount": _yuan(int(params.get("amount", 0))),
                "url": str(params.get("url", "")),
                "expires_at": _local(params.get("expires_at", ""))}
    raise ValueError(kind)


# subscribe-message data keys per kind (the template's fields, in its order)
WECHAT_FIELDS = {
    "ticket_issued": [("character_string1", "order_no"), ("thing2", "route"),
                      ("time3", "departs_at"), ("number4", "tickets")],
    "refund_done": [("character_string1", "order_no"), ("amount2", "amount"),
                    ("thing3", "route")],
    "departure_changed": [("thing1", "route"), ("time2", "departs_at"), ("thing3", "change")],
    "payment_expiring": [("character_string1", "order_no"), ("thing2", "route"),
                         ("time3", "expires_at")],
}


class Senders:
    """How a notice reaches the passenger: a subscribe message in WeChat when the member has
    an openid and the kind a template, else (or when WeChat refuses) an SMS to the order's
    contact phone."""

    def __init__(self, sms: SmsProvider, wechat: SubscribeMessenger | None,
                 templates: dict[str, str]) -> None:
        self._sms = sms
        self._wechat = wechat
        self._templates = templates

    async def send(self, kind: str, values: dict[str, str], order_no: str, *, openid: str,
                   phone: str, out_id: str) -> tuple[tuple[str, str] | None, list[str]]:
        """((via, message id) when sent, else None; what failed on the way)."""
        errors = []
        template = self._templates.get(kind)
        if openid and template and self._wechat is not None:
            data = {key: {"value": values[name]} for key, name in WECHAT_FIELDS[kind]}
            try:
                msgid = await self._wechat.send(openid, template, data,
                                                f"pages/order/detail?order_no={order_no}")
                return ("wechat", msgid), errors
            except SubscribeMessageError as exc:
                errors.append(f"wechat {exc.errcode}")
        if not phone:
            return None, [*errors, "no phone"]
        try:
            return ("sms", await self._sms.send(phone, kind, values, out_id=out_id)), errors
        except SmsError as exc:
            return None, [*errors, f"sms {exc}"]


class NoticeDispatcher:
    def __init__(self, db: AsyncDatabase[Any], vault: PiiVault, sms: SmsProvider,
                 wechat: SubscribeMessenger | None, templates: dict[str, str],
                 failures: RecordFailures | None = None) -> None:
        self._db = db
        self.failures = failures or RecordFailures()
        self._vault = vault
        self.senders = Senders(sms, wechat, templates)

    async def run(self, limit: int = 100) -> int:
        """Send what is due; returns how many were handled."""
        now = dt.datetime.now(dt.UTC)
        await self._db.notices.update_many(
            {"status": "sending", "claimed_at": {"$lte": now - CLAIM_TIMEOUT}},
            {"$set": {"status": "pending"}})
        handled = 0
        while handled < limit:
            notice = await self._db.notices.find_one_and_update(
                {"status": "pending", "next_at": {"$lte": now}},
                {"$set": {"status": "sending", "claimed_at": now}, "$inc": {"attempts": 1}},
                sort=[("next_at", 1)], return_document=ReturnDocument.AFTER)
            if notice is None:
                break
            with self.failures.record("notices", notice["_id"]):
                await self._deliver(notice)  # a failure is retried once its claim times out
            handled += 1
        return handled

    async def _deliver(self, notice: dict[str, Any]) -> None:
        order = await self._db.orders.find_one({"order_no": notice["order_no"]})
        if order is None:
            await self._finish(notice, "failed", error="order not found")
            return
        departure = await self._db.departures.find_one({"_id": order["departure_id"]}) or {}
        route = await self._db.routes.find_one({"_id": departure.get("route_id")}) or {}
        values = render(notice["kind"], order, departure, route.get("name", ""),
                        notice.get("params") or {})
        openid = ""
        if order.get("member_id"):
            member = await self._db.members.find_one({"_id": order["member_id"]},
                                                     {"openid": 1}) or {}
            openid = member.get("openid", "")
        phone = self._vault.decrypt("phone", order["contact_phone_enc"]) \
            if order.get("contact_phone_enc") else ""
        sent, errors = await self.senders.send(notice["kind"], values, order["order_no"],
                                               openid=openid, phone=phone,
                                               out_id=str(notice["_id"]))
        if sent is not None:
            await self._finish(notice, "sent", via=sent[0], message_id=sent[1])
            return
        if notice["attempts"] >= MAX_ATTEMPTS:
            await self._finish(notice, "failed", error="; ".join(errors))
            log.error("notice given up", extra={"fields": {"notice": notice["_id"],
                                                           "errors": errors}})
            return
        retry_at = dt.datetime.now(dt.UTC) + BACKOFF * 2 ** (notice["attempts"] - 1)
        await self._db.notices.update_one(
            {"_id": notice["_id"], "status": "sending"},
            {"$set": {"status": "pending", "next_at": retry_at, "error": "; ".join(errors)}})
        log.warning("notice not sent; retrying", extra={"fields": {
            "notice": notice["_id"], "errors": errors, "phone": mask_pii(phone)}})

    async def _finish(self, notice: dict[str, Any], status: str, **fields: Any) -> None:
        await self._db.notices.update_one(
            {"_id": notice["_id"], "status": "sending"},
            {"$set": {"status": status, "done_at": dt.datetime.now(dt.UTC), **fields}})

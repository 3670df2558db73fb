"""Passenger notices: the outbox the services write to, and the interfaces of the providers
that carry them (implementations live in ``notify/`` and are chosen in ``server.app``).

A notice is written to the ``notices`` collection once its change is stored, under a key
naming the event (``ticket_issued:<order>``, ``refund_done:<refund request>``, …): writing
the same event again changes nothing, so a notice is never queued twice. The dispatcher in
``notify.dispatch`` sends it, retrying with back-off.
"""

from __future__ import annotations

import abc
import datetime as dt
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

KINDS = ("ticket_issued", "refund_done", "departure_changed", "payment_expiring", "pay_link")


class SmsError(Exception):
    """The provider did not accept the message."""


class SmsProvider(abc.ABC):
    """Sends one templated text message."""

    identifier = ""

    @abc.abstractmethod
    async def send(self, phone: str, template: str, params: dict[str, Any],
                   out_id: str = "") -> str:
        """Send; returns the provider's message id; SmsError on failure. ``out_id`` is our
        id of the message: a provider that has seen it already does not send it again."""


class SubscribeMessageError(Exception):
    """WeChat did not deliver; ``refused`` when the passenger has not accepted the template
    (errcode 43101), which is no reason to retry WeChat but is one to try SMS."""

    def __init__(self, errcode: int, refused: bool = False) -> None:
        super().__init__(f"errcode {errcode}")
        self.errcode = errcode
        self.refused = refused


class SubscribeMessenger(abc.ABC):
    """Sends one mini-program subscribe message."""

    @abc.abstractmethod
    async def send(self, openid: str, template_id: str, data: dict[str, Any],
                   page: str) -> str:
        """Send; returns WeChat's msgid; SubscribeMessageError on failure."""


class NoticeOutbox:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._db = db

    async def enqueue(self, key: str, kind: str, order_no: str,
                      params: dict[str, Any], session: Any = None) -> bool:
        """Queue the notice of one event (inside the caller's transaction when given a
        session, so the event and its notice are stored together); False if that event was
        already queued."""
        if kind not in KINDS:
            raise ValueError(f"unknown notice kind {kind!r}")
        now = dt.datetime.now(dt.UTC)
        result = await self._db.notices.update_one(
            {"_id": key},
            {"$setOnInsert": {"kind": kind, "order_no": order_no, "params": params,
                              "status": "pending", "attempts": 0, "next_at": now,
                              "created_at": now}}, upsert=True, session=session)
        return result.upserted_id is not None

"""In-memory senders for pure unit tests: they keep what was sent and fail when told to.
(The HTTP sandbox in ``sandbox/providers.py`` plays the SMS gateway and WeChat for
integration tests.)"""

from __future__ import annotations

from typing import Any

from server.outbox import SmsError, SmsProvider, SubscribeMessageError, SubscribeMessenger


class MemorySms(SmsProvider):
    identifier = "memory"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.failing = False

    async def send(self, phone: str, template: str, params: dict[str, Any],
                   out_id: str = "") -> str:
        if self.failing:
            raise SmsError("gateway down")
        if out_id and any(m["out_id"] == out_id for m in self.sent):  # seen: not again
            return next(m["id"] for m in self.sent if m["out_id"] == out_id)
        message = {"id": f"sms{len(self.sent) + 1}", "phone": phone, "template": template,
                   "params": params, "out_id": out_id}
        self.sent.append(message)
        return str(message["id"])


class MemorySubscribe(SubscribeMessenger):
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.accepted: set[str] = set()  # openids that accepted the templates

    async def send(self, openid: str, template_id: str, data: dict[str, Any],
                   page: str) -> str:
        if openid not in self.accepted:
            raise SubscribeMessageError(43101, refused=True)
        self.sent.append({"openid": openid, "template": template_id, "data": data,
                          "page": page})
        return f"msg{len(self.sent)}"

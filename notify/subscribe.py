"""WeChat mini-program subscribe messages (订阅消息) through wechatpy, run in the executor.

A passenger must have accepted a template in the mini-program (``wx.requestSubscribeMessage``)
for WeChat to deliver it; without that WeChat answers errcode 43101, which the dispatcher takes
as "use SMS", not as a failure worth retrying.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.miniprogram import wechat_client
from server.outbox import SubscribeMessageError, SubscribeMessenger

log = logging.getLogger(__name__)

REFUSED = 43101  # user refuse to accept the msg


class WeChatSubscribe(SubscribeMessenger):
    def __init__(self, appid: str, secret: str, api_base: str) -> None:
        self._appid, self._secret, self._base = appid, secret, api_base
        self._client: Any = None

    def _send(self, openid: str, template_id: str, data: dict[str, Any], page: str) -> str:
        from wechatpy.exceptions import WeChatClientException

        if self._client is None:
            self._client = wechat_client(self._appid, self._secret, self._base)
        try:
            result = self._client.wxa.send_subscribe_message(openid, template_id, data, page)
        except WeChatClientException as exc:
            raise SubscribeMessageError(int(exc.errcode or -1),
                                        refused=exc.errcode == REFUSED) from None
        return str((result or {}).get("msgid", ""))

    async def send(self, openid: str, template_id: str, data: dict[str, Any],
                   page: str) -> str:
        if not self._base:
            raise SubscribeMessageError(-1)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._send, openid, template_id, data, page)
        except SubscribeMessageError:
            raise
        except Exception as exc:  # requests' connection errors and the like
            log.warning("subscribe message not sent: %s", type(exc).__name__)
            raise SubscribeMessageError(-1) from None

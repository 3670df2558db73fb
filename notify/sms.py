"""SMS: the HTTP gateway implementation of ``server.outbox.SmsProvider`` (the sandbox
speaks it).

Messages are sent only after the change they announce is stored; the provider never sees
more than the phone and the template parameters.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from server.logs import mask_pii
from server.outbox import SmsError, SmsProvider

log = logging.getLogger(__name__)


class HttpSmsProvider(SmsProvider):
    """A JSON gateway: ``POST {base}/sms/v1/send`` with a bearer key."""

    identifier = "http"

    def __init__(self, base_url: str, api_key: str, timeout: float = 5.0) -> None:
        self._url = base_url.rstrip("/") + "/sms/v1/send"
        self._key = api_key
        self._timeout = timeout

    async def send(self, phone: str, template: str, params: dict[str, Any],
                   out_id: str = "") -> str:
        request = HTTPRequest(self._url, method="POST",
                              body=json.dumps({"phone": phone, "template": template,
                                               "params": params, "out_id": out_id}),
                              headers={"Authorization": f"Bearer {self._key}",
                                       "Content-Type": "application/json"},
                              request_timeout=self._timeout, connect_timeout=self._timeout)
        try:
            response = await AsyncHTTPClient().fetch(request)
            message_id = str(json.loads(response.body)["message_id"])
        except (HTTPClientError, OSError, ValueError, KeyError) as exc:
            log.warning("sms not sent to %s: %s", mask_pii(phone), type(exc).__name__)
            raise SmsError(type(exc).__name__) from None
        return message_id

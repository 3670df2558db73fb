"""The wechatpy client of the mini-program, pointed at the configured API base (WeChat itself
or the sandbox). wechatpy is synchronous: callers run it in the executor."""

from __future__ import annotations

from typing import Any


def wechat_client(appid: str, secret: str, api_base: str) -> Any:
    from wechatpy import WeChatClient

    base = api_base.rstrip("/")

    class Client(WeChatClient):  # type: ignore[misc]
        """wechatpy fetches its access token from a fixed host; use the configured one
        (it also sends the token along with code2session, which WeChat ignores)."""

        def fetch_access_token(self) -> Any:
            return self._fetch_access_token(
                url=f"{base}/cgi-bin/token",
                params={"grant_type": "client_credential", "appid": self.appid,
                        "secret": self.secret})

    client = Client(appid, secret, timeout=5)
    client.API_BASE_URL = f"{base}/cgi-bin/"
    client.wxa.API_BASE_URL = f"{base}/"
    return client

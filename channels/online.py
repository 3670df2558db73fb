"""The online channels a member buys on: the WeChat mini-program, the app, the website.

A member sees their own orders, whichever of these they bought on."""

from __future__ import annotations

from typing import Any, ClassVar

from channels.base import SalesChannel
from server.security.principal import Principal


class OnlineChannel(SalesChannel):
    member_required: ClassVar[bool] = True

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        return {"member_id": actor.id}


class MiniProgram(OnlineChannel):
    identifier, name, kind = "miniapp", "微信小程序", "miniapp"
    payment_methods = ("wechat_jsapi",)


class App(OnlineChannel):
    identifier, name, kind = "app", "手机APP", "app"
    payment_methods = ("wechat_app", "alipay_app")


class Web(OnlineChannel):
    identifier, name, kind = "web", "网站(H5)", "web"
    payment_methods = ("alipay_wap", "wechat_jsapi")

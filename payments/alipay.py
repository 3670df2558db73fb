"""Alipay (APP and WAP) with alipay-sdk-python's signing pieces; RSA2 only.

- Requests: the common parameters plus ``biz_content``, sorted and joined ``k=v&…``
  (``SignatureUtils.get_sign_content``), signed RSA2 (``sign_with_rsa2``) with the app key.
  APP pay hands the signed order string to the client; WAP pay a gateway URL.
- Answers: the JSON of ``<method>_response`` is verified, as raw text, with Alipay's key.
- Notifications (form-encoded): drop ``sign`` and ``sign_type``, sort, join, verify RSA2;
  ``sign_type`` other than RSA2 is refused, and so is a signature made with SHA-1 (the SDK's
  ``verify_with_rsa`` would accept one: it returns ``bool`` of the hash name); then
  ``app_id``, ``seller_id``, ``out_trade_no`` and ``total_amount`` are checked. Reply
  exactly ``success``.
- python-rsa is pure Python: signing and verifying run in the executor.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import rsa
from alipay.aop.api.util.SignatureUtils import (
    fill_public_key_marker,
    get_sign_content,
    sign_with_rsa2,
)
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from payments.base import (
    Attempt,
    BasePaymentProvider,
    NotificationRejected,
    PaymentError,
    ProviderState,
    RefundResult,
)
from server.clock import LOCAL_TZ

STATES = {"TRADE_SUCCESS": "paid", "TRADE_FINISHED": "paid", "WAIT_BUYER_PAY": "pending",
          "TRADE_CLOSED": "closed"}


def yuan(fen: int) -> str:
    """4500 → "45.00" (Alipay amounts are yuan with two decimals)."""
    return f"{Decimal(fen) / 100:.2f}"


def fen(text: str) -> int:
    value = Decimal(text) * 100
    if value != value.to_integral_value():
        raise ValueError(f"not a fen amount: {text}")
    return int(value)


def verify_rsa2(public_key_body: str, message: bytes, signature: str) -> bool:
    """RSA2 only: a valid SHA-1 signature is refused as well."""
    try:
        method = rsa.verify(message, base64.b64decode(signature),
                            rsa.PublicKey.load_pkcs1_openssl_pem(
                                fill_public_key_marker(public_key_body).encode()))
    except (rsa.VerificationError, ValueError):
        return False
    return method == "SHA-256"


@dataclass
class AlipayConfig:
    gateway: str  # https://openapi.alipay.com/gateway.do
    app_id: str
    seller_id: str  # the merchant PID (2088…)
    app_private_key: str  # PKCS#1, base64 body (Alipay's key tool format)
    alipay_public_key: str  # base64 body
    notify_url: str
    return_url: str = ""


class Alipay(BasePaymentProvider):
    identifier = "alipay"
    methods = ("alipay_app", "alipay_wap")

    def __init__(self, config: AlipayConfig, timeout: float = 5.0) -> None:
        self.config = config
        self._timeout = timeout

    async def _signed(self, method: str, biz: dict[str, Any], **extra: str) -> dict[str, str]:
        params = {"app_id": self.config.app_id, "method": method, "format": "JSON",
                  "charset": "utf-8", "sign_type": "RSA2", "version": "1.0",
                  "timestamp": dt.datetime.now(LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S"),
                  "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
                  **extra}
        content = get_sign_content(params)
        params["sign"] = await asyncio.get_running_loop().run_in_executor(
            None, sign_with_rsa2, self.config.app_private_key, content, "utf-8")
        return params

    async def _call(self, method: str, biz: dict[str, Any]) -> dict[str, Any]:
        params = await self._signed(method, biz)
        try:
            resp = await AsyncHTTPClient().fetch(
                self.config.gateway, method="POST", body=urlencode(params),
                headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
                request_timeout=self._timeout, raise_error=False)
        except (HTTPClientError, OSError) as exc:
            raise PaymentError(f"Alipay unreachable: {type(exc).__name__}", retry=True) \
                from None
        if resp.code != 200:
            raise PaymentError(f"Alipay HTTP {resp.code}", retry=True)
        text = resp.body.decode("utf-8")
        key = method.replace(".", "_") + "_response"
        # the signature covers the raw text of the response object, exactly as sent
        pattern = '"' + re.escape(key) + r'"\s*:\s*(\{.*?\})\s*,\s*"sign"\s*:\s*"([^"]+)"'
        match = re.search(pattern, text, re.S)
        if match is None:
            raise PaymentError("Alipay answer without signature")
        ok = await asyncio.get_running_loop().run_in_executor(
            None, verify_rsa2, self.config.alipay_public_key, match.group(1).encode(),
            match.group(2))
        if not ok:
            raise PaymentError("Alipay answer signature does not verify")
        data: dict[str, Any] = json.loads(match.group(1))
        if data.get("code") != "10000":
            if data.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                return {"trade_status": "NOT_EXIST", **data}
            raise PaymentError(f"Alipay refused: {data.get('sub_code') or data.get('code')}",
                               code=str(data.get("sub_code") or data.get("code") or ""))
        return data

    async def start(self, attempt: Attempt, method: str) -> dict[str, Any]:
        biz = {"out_trade_no": attempt.out_trade_no, "total_amount": yuan(attempt.amount),
               "subject": attempt.description[:256],
               "product_code": "QUICK_MSECURITY_PAY" if method == "alipay_app"
               else "QUICK_WAP_WAY", "timeout_express": "15m"}
        api = "alipay.trade.app.pay" if method == "alipay_app" else "alipay.trade.wap.pay"
        extra = {"notify_url": self.config.notify_url}
        if method == "alipay_wap" and self.config.return_url:
            extra["return_url"] = self.config.return_url
        params = await self._signed(api, biz, **extra)
        if method == "alipay_app":
            return {"order_string": urlencode(params)}
        return {"pay_url": f"{self.config.gateway}?{urlencode(params)}"}

    async def query(self, out_trade_no: str) -> ProviderState:
        data = await self._call("alipay.trade.query", {"out_trade_no": out_trade_no})
        return ProviderState(out_trade_no, STATES.get(data.get("trade_status", ""), "pending"),
                             fen(data["total_amount"]) if data.get("total_amount") else None,
                             str(data.get("trade_no", "")), str(data.get("trade_status", "")))

    async def close(self, out_trade_no: str) -> None:
        await self._call("alipay.trade.close", {"out_trade_no": out_trade_no})

    async def refund(self, out_trade_no: str, out_refund_no: str, amount: int,
                     total: int) -> RefundResult:
        data = await self._call("alipay.trade.refund", {
            "out_trade_no": out_trade_no, "refund_amount": yuan(amount),
            "out_request_no": out_refund_no})
        # fund_change Y: this call moved the money; N is no failure — only a refund query
        # (refund_status REFUND_SUCCESS) says the money is back
        return RefundResult(out_refund_no, "done" if data.get("fund_change") == "Y"
                            else "processing", str(data.get("trade_no", "")), amount,
                            str(data.get("fund_change", "")))

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        data = await self._call("alipay.trade.fastpay.refund.query", {
            "out_trade_no": out_trade_no, "out_request_no": out_refund_no})
        status = str(data.get("refund_status", ""))
        amount = fen(data["refund_amount"]) if data.get("refund_amount") else None
        return RefundResult(out_refund_no, "done" if status == "REFUND_SUCCESS"
                            else "processing", str(data.get("trade_no", "")), amount, status)

    async def statement(self, bill_date: str) -> list[Any]:
        """The day's trade bill: a download URL from the signed API, then a GBK CSV zip."""
        from payments.statements import parse_alipay_bill

        try:
            data = await self._call("alipay.data.dataservice.bill.downloadurl.query",
                                    {"bill_type": "trade", "bill_date": bill_date})
        except PaymentError as exc:
            if exc.code == "isp.bill_not_exist":  # a past day without trades
                return []
            raise
        try:
            response = await AsyncHTTPClient().fetch(str(data["bill_download_url"]),
                                                     request_timeout=self._timeout)
        except (HTTPClientError, OSError, KeyError) as exc:
            raise PaymentError(f"bill download failed: {type(exc).__name__}", retry=True) \
                from None
        return parse_alipay_bill(response.body)

    async def parse_notification(self, headers: dict[str, str], body: bytes
                                 ) -> ProviderState:
        from urllib.parse import parse_qsl

        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise NotificationRejected("body is not UTF-8 (we ask Alipay for charset=utf-8)") \
                from None
        params = dict(parse_qsl(text, keep_blank_values=True))
        if params.get("sign_type") != "RSA2":
            raise NotificationRejected("only RSA2 is accepted")
        signature = params.pop("sign", "")
        params.pop("sign_type", None)
        if not verify_rsa2(self.config.alipay_public_key,
                           get_sign_content(params).encode("utf-8"), signature):
            raise NotificationRejected("signature does not verify")
        if params.get("app_id") != self.config.app_id or \
                params.get("seller_id") != self.config.seller_id:
            raise NotificationRejected("notification for another app or seller")
        try:
            amount = fen(params["total_amount"])
        except (KeyError, ValueError, ArithmeticError):
            raise NotificationRejected("bad total_amount") from None
        return ProviderState(params.get("out_trade_no", ""),
                             STATES.get(params.get("trade_status", ""), "pending"), amount,
                             params.get("trade_no", ""), params.get("trade_status", ""))


def new_alipay_keys() -> tuple[str, str]:
    """(PKCS#1 private body, public key body) in Alipay's key-tool format."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as crsa

    key = crsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def body(pem: str) -> str:
        return "".join(line for line in pem.splitlines() if not line.startswith("-----"))

    return body(private), body(public)

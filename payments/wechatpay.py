"""WeChat Pay API v3 (JSAPI for the mini-program, APP), with ``cryptography`` directly.

- Requests: ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,signature=…,
  timestamp=…,serial_no=…`` where the signature is SHA256-RSA (PKCS#1 v1.5) with the
  merchant key over ``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n``.
- Answers and notifications: SHA256-RSA over ``TIMESTAMP\\nNONCE\\nBODY\\n`` of the raw bytes,
  checked with the platform key named by ``Wechatpay-Serial`` (public-key mode); a timestamp
  more than five minutes off is refused (the SDKs lack this check).
- Notification ``resource``: AEAD_AES_256_GCM with the APIv3 key, ``associated_data`` bound.
- Mini-program ``paySign``: SHA256-RSA over ``appId\\ntimeStamp\\nnonceStr\\npackage\\n``.
- Two appids: the mini-program's (JSAPI) and the mobile app's (APP, WeChat Open Platform);
  each attempt is made under one, and its notification must name that one.
- Refunds are asynchronous: ``PROCESSING`` until a ``REFUND.*`` notification or a refund
  query says ``SUCCESS``, ``CLOSED`` or ``ABNORMAL``.
- Platform certificate serials are hexadecimal numbers and compared as such (a serial with
  leading zeros is the same certificate).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from payments.base import (
    Attempt,
    BasePaymentProvider,
    NotificationRejected,
    PaymentError,
    ProviderState,
    RefundResult,
)

MAX_SKEW = 300  # seconds
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CERT_REFRESH_INTERVAL = 60.0  # an unknown serial fetches certificates at most once a minute
REFUND_STATES = {"SUCCESS": "done", "PROCESSING": "processing", "CLOSED": "closed",
                 "ABNORMAL": "abnormal"}
STATES = {"SUCCESS": "paid", "NOTPAY": "pending", "USERPAYING": "pending", "CLOSED": "closed",
          "REVOKED": "closed", "REFUND": "refunded", "PAYERROR": "failed"}


def sign(private_key: rsa.RSAPrivateKey, message: str) -> str:
    return base64.b64encode(private_key.sign(message.encode(), padding.PKCS1v15(),
                                             hashes.SHA256())).decode()


def verify(public_key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        public_key.verify(base64.b64decode(signature), message, padding.PKCS1v15(),
                          hashes.SHA256())
        return True
    except (InvalidSignature, ValueError):
        return False


def load_private(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def load_public(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def decrypt_resource(api_v3_key: bytes, resource: dict[str, Any], raw: bool = False) -> Any:
    """AEAD_AES_256_GCM with the APIv3 key; JSON (or the raw bytes, for certificates)."""
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise NotificationRejected("unsupported resource algorithm")
    try:
        plain = AESGCM(api_v3_key).decrypt(
            str(resource["nonce"]).encode(), base64.b64decode(resource["ciphertext"]),
            str(resource.get("associated_data", "")).encode())
        return plain if raw else json.loads(plain)
    except (InvalidTag, KeyError, ValueError) as exc:
        raise NotificationRejected(f"resource does not decrypt: {type(exc).__name__}") \
            from None


def encrypt_resource(api_v3_key: bytes, payload: dict[str, Any], associated: str) -> dict[str,
                                                                                            Any]:
    """What the provider does (used by the sandbox)."""
    nonce = secrets.token_hex(6)
    ciphertext = AESGCM(api_v3_key).encrypt(nonce.encode(), json.dumps(payload).encode(),
                                            associated.encode())
    return {"algorithm": "AEAD_AES_256_GCM", "nonce": nonce, "associated_data": associated,
            "ciphertext": base64.b64encode(ciphertext).decode(), "original_type": "transaction"}


def serial_key(serial: str) -> str:
    """A serial as we key platform keys by: certificate serials are hex numbers (``0A1B`` and
    ``A1B`` are one certificate); public-key ids (``PUB_KEY_ID_…``) are kept as they are."""
    try:
        return format(int(serial, 16), "X")
    except ValueError:
        return serial


@dataclass
class WeChatPayConfig:
    api_base: str
    mchid: str
    appid: str  # the mini-program's (JSAPI)
    serial_no: str  # of the merchant key
    private_key_pem: str
    api_v3_key: str  # 32 characters
    platform_serial: str  # public-key mode: PUB_KEY_ID_…; "" in certificate mode
    platform_public_key_pem: str  # "" in certificate mode
    notify_url: str
    app_appid: str = ""  # the mobile app's (APP), from the WeChat Open Platform


class WeChatPay(BasePaymentProvider):
    identifier = "wechat"
    methods = ("wechat_jsapi", "wechat_app", "wechat_h5")

    def __init__(self, config: WeChatPayConfig, timeout: float = 5.0) -> None:
        self.config = config
        self._key = load_private(config.private_key_pem)
        # public-key mode: one configured key; certificate mode: downloaded certificates
        self._platform: dict[str, rsa.RSAPublicKey] = {}
        if config.platform_serial and config.platform_public_key_pem:
            self._platform[serial_key(config.platform_serial)] = \
                load_public(config.platform_public_key_pem)
        self._v3 = config.api_v3_key.encode()
        self._timeout = timeout
        self._last_refresh = -CERT_REFRESH_INTERVAL
        self._refresh_lock = asyncio.Lock()
        self.certificate_downloads = 0

    async def platform_key(self, serial: str) -> rsa.RSAPublicKey | None:
        """The key of a serial; an unknown one refreshes certificates, at most once a minute
        (so forged serials cannot make us hammer the API)."""
        serial = serial_key(serial)
        if serial in self._platform:
            return self._platform[serial]
        if self.config.platform_public_key_pem:
            return None  # public-key mode: nothing to download
        async with self._refresh_lock:
            if serial not in self._platform and \
                    time.monotonic() - self._last_refresh >= CERT_REFRESH_INTERVAL:
                self._last_refresh = time.monotonic()
                await self._download_certificates()
        return self._platform.get(serial)

    async def _download_certificates(self) -> None:
        path = "/v3/certificates"
        request = HTTPRequest(self.config.api_base + path, headers={
            "Authorization": self.authorization("GET", path, ""), "Accept": "application/json"},
            request_timeout=self._timeout)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except (HTTPClientError, OSError) as exc:
            raise PaymentError(f"certificate download failed: {type(exc).__name__}",
                               retry=True) from None
        self.certificate_downloads += 1
        found: dict[str, rsa.RSAPublicKey] = {}
        for item in json.loads(response.body).get("data", []):
            pem = decrypt_resource(self._v3, {**item["encrypt_certificate"],
                                              "algorithm": item["encrypt_certificate"].get(
                                                  "algorithm")}, raw=True)
            cert = x509.load_pem_x509_certificate(pem)
            key = cert.public_key()
            try:
                listed = int(str(item["serial_no"]), 16)
            except ValueError:
                continue
            if isinstance(key, rsa.RSAPublicKey) and cert.serial_number == listed:
                found[format(listed, "X")] = key
        # the answer must itself be signed by one of the certificates it brings
        headers = {k.lower(): v for k, v in response.headers.get_all()}
        signer = found.get(serial_key(headers.get("wechatpay-serial", "")))
        message = (f"{headers.get('wechatpay-timestamp', '')}\n"
                   f"{headers.get('wechatpay-nonce', '')}\n").encode() + response.body + b"\n"
        if signer is None or not verify(signer, message, headers.get("wechatpay-signature", "")):
            raise PaymentError("certificate list not signed by its own certificates")
        self._platform.update(found)

    # --- wire -------------------------------------------------------------------------------
    def authorization(self, method: str, path: str, body: str) -> str:
        nonce, ts = secrets.token_hex(16), str(int(time.time()))
        signature = sign(self._key, f"{method}\n{path}\n{ts}\n{nonce}\n{body}\n")
        return (f'WECHATPAY2-SHA256-RSA2048 mchid="{self.config.mchid}",nonce_str="{nonce}",'
                f'signature="{signature}",timestamp="{ts}",serial_no="{self.config.serial_no}"')

    async def check_signed(self, headers: dict[str, str], body: bytes) -> None:
        """The platform signed these bytes, recently (NotificationRejected otherwise)."""
        lower = {k.lower(): v for k, v in headers.items()}
        if lower.get("wechatpay-signature-type", SIGNATURE_TYPE) != SIGNATURE_TYPE:
            raise NotificationRejected("unsupported signature type")
        serial = lower.get("wechatpay-serial", "")
        try:
            key = await self.platform_key(serial)
        except PaymentError as exc:
            raise NotificationRejected(str(exc)) from None
        if key is None:
            raise NotificationRejected(f"unknown platform serial {serial!r}")
        try:
            ts = int(lower.get("wechatpay-timestamp", ""))
        except ValueError:
            raise NotificationRejected("no timestamp") from None
        if abs(time.time() - ts) > MAX_SKEW:
            raise NotificationRejected("timestamp outside the five-minute window")
        message = f"{ts}\n{lower.get('wechatpay-nonce', '')}\n".encode() + body + b"\n"
        if not verify(key, message, lower.get("wechatpay-signature", "")):
            raise NotificationRejected("signature does not verify")

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None
                    ) -> tuple[int, dict[str, Any]]:
        body = json.dumps(payload) if payload is not None else ""
        request = HTTPRequest(self.config.api_base + path, method=method,
                              body=body if method != "GET" else None,
                              headers={"Authorization": self.authorization(method, path, body),
                                       "Content-Type": "application/json",
                                       "Accept": "application/json"},
                              request_timeout=self._timeout, connect_timeout=self._timeout)
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (HTTPClientError, OSError) as exc:
            raise PaymentError(f"WeChat Pay unreachable: {type(exc).__name__}", retry=True) \
                from None
        if response.code == 599 or response.code >= 500:
            raise PaymentError(f"WeChat Pay HTTP {response.code}", retry=True)
        raw = response.body or b""
        try:
            await self.check_signed(dict(response.headers.get_all()), raw)
        except NotificationRejected as exc:
            raise PaymentError(f"answer not signed by WeChat Pay: {exc}") from None
        data = json.loads(raw) if raw else {}
        if response.code >= 400:
            raise PaymentError(f"WeChat Pay refused: {data.get('code')} {data.get('message')}",
                               code=str(data.get("code", "")))
        return response.code, data

    # --- operations -------------------------------------------------------------------------
    async def start(self, attempt: Attempt, method: str) -> dict[str, Any]:
        kind = {"wechat_jsapi": "jsapi", "wechat_h5": "h5"}.get(method, "app")
        appid = self.account_for(method)
        payload: dict[str, Any] = {
            "appid": appid, "mchid": self.config.mchid,
            "description": attempt.description[:127], "out_trade_no": attempt.out_trade_no,
            "notify_url": self.config.notify_url,
            "amount": {"total": attempt.amount, "currency": "CNY"}}
        if kind == "jsapi":
            if not attempt.payer.get("openid"):
                raise PaymentError("JSAPI payment needs the payer's openid")
            payload["payer"] = {"openid": attempt.payer["openid"]}
        if kind == "h5":  # a phone's browser outside WeChat (a payment link by SMS)
            payload["scene_info"] = {"payer_client_ip": attempt.payer.get("client_ip") or
                                     "127.0.0.1", "h5_info": {"type": "Wap"}}
        _, data = await self._call("POST", f"/v3/pay/transactions/{kind}", payload)
        if kind == "h5":
            return {"h5_url": str(data["h5_url"])}
        prepay_id = str(data["prepay_id"])
        nonce, ts = secrets.token_hex(16), str(int(time.time()))
        if kind == "jsapi":
            package = f"prepay_id={prepay_id}"
            return {"appId": appid, "timeStamp": ts, "nonceStr": nonce,
                    "package": package, "signType": "RSA",
                    "paySign": sign(self._key, f"{appid}\n{ts}\n{nonce}\n{package}\n")}
        return {"appid": appid, "partnerid": self.config.mchid,
                "prepayid": prepay_id, "package": "Sign=WXPay", "noncestr": nonce,
                "timestamp": ts, "sign": sign(self._key, f"{appid}\n{ts}\n{nonce}\n"
                                                         f"{prepay_id}\n")}

    def account_for(self, method: str) -> str:
        """The appid a payment by ``method`` is made under (and notified for)."""
        if method == "wechat_app":
            return self.config.app_appid or self.config.appid
        return self.config.appid

    async def query(self, out_trade_no: str) -> ProviderState:
        _, data = await self._call(
            "GET", f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={self.config.mchid}")
        return self._state(data)

    async def close(self, out_trade_no: str) -> None:
        await self._call("POST", f"/v3/pay/transactions/out-trade-no/{out_trade_no}/close",
                         {"mchid": self.config.mchid})

    async def refund(self, out_trade_no: str, out_refund_no: str, amount: int,
                     total: int) -> RefundResult:
        _, data = await self._call("POST", "/v3/refund/domestic/refunds", {
            "out_trade_no": out_trade_no, "out_refund_no": out_refund_no,
            "notify_url": self.config.notify_url,
            "amount": {"refund": amount, "total": total, "currency": "CNY"}})
        return self._refund_state(data)

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        _, data = await self._call("GET", f"/v3/refund/domestic/refunds/{out_refund_no}")
        return self._refund_state(data)

    @staticmethod
    def _refund_state(data: dict[str, Any]) -> RefundResult:
        raw = str(data.get("status") or data.get("refund_status") or "")
        amount = (data.get("amount") or {}).get("refund")
        return RefundResult(str(data.get("out_refund_no", "")),
                            REFUND_STATES.get(raw, "processing"),
                            str(data.get("refund_id", "")),
                            int(amount) if isinstance(amount, int) else None, raw)

    async def statement(self, bill_date: str) -> list[Any]:
        """The day's trade bill: URL from the signed API, file checked against its SHA1."""
        from payments.statements import parse_wechat_tradebill

        try:
            _, meta = await self._call("GET", f"/v3/bill/tradebill?bill_date={bill_date}"
                                              "&bill_type=ALL")
        except PaymentError as exc:
            if exc.code == "NO_STATEMENT_EXIST":  # a day without trades has no bill
                return []
            raise
        url = str(meta["download_url"])
        path = url.split("://", 1)[1].split("/", 1)[1]
        request = HTTPRequest(url, headers={"Authorization": self.authorization(
            "GET", "/" + path, "")}, request_timeout=self._timeout)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except (HTTPClientError, OSError) as exc:
            raise PaymentError(f"bill download failed: {type(exc).__name__}", retry=True) \
                from None
        if meta.get("hash_type") != "SHA1" or \
                hashlib.sha1(response.body).hexdigest() != meta.get("hash_value"):  # noqa: S324
            raise PaymentError("bill file does not match its SHA1")
        lines, _ = parse_wechat_tradebill(response.body.decode("utf-8"))
        return lines

    async def parse_notification(self, headers: dict[str, str], body: bytes
                                 ) -> ProviderState | RefundResult:
        await self.check_signed(headers, body)
        try:
            envelope = json.loads(body)
        except ValueError:
            raise NotificationRejected("body is not JSON") from None
        if not isinstance(envelope, dict):
            raise NotificationRejected("body is not a notification")
        data = decrypt_resource(self._v3, envelope.get("resource") or {})
        if not isinstance(data, dict) or data.get("mchid") != self.config.mchid:
            raise NotificationRejected("notification for another merchant")
        if str(envelope.get("event_type", "")).startswith("REFUND."):
            return self._refund_state(data)  # refund notices carry no appid
        if data.get("appid") not in {self.config.appid, self.config.app_appid} - {""}:
            raise NotificationRejected("notification for another app")
        return self._state(data)

    @staticmethod
    def _state(data: dict[str, Any]) -> ProviderState:
        raw = str(data.get("trade_state", ""))
        amount = (data.get("amount") or {}).get("total")
        return ProviderState(str(data.get("out_trade_no", "")), STATES.get(raw, "pending"),
                             int(amount) if isinstance(amount, int) else None,
                             str(data.get("transaction_id", "")), raw,
                             str(data.get("appid", "")))


def new_rsa_key() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh 2048-bit key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public

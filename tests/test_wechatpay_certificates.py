"""WeChat Pay platform-certificate mode against a sandbox that serves /v3/certificates:
certificates downloaded and decrypted on first need, an unknown serial refreshes at most
once a minute, notifications verified with the certificate's key — also for a serial
written with leading zeros (serials are hex numbers, compared as such)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from devstack import embedded
from payments.base import Attempt, NotificationRejected
from payments.wechatpay import (
    WeChatPay,
    WeChatPayConfig,
    encrypt_resource,
    load_private,
    sign,
)
from tests.support import TEST_SECRETS

CERT_SERIALS = ["5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
                "0057F09EFDC096DE15EBE81A47057A7232F1B8E1"]


@pytest.fixture(params=CERT_SERIALS, ids=["serial", "serial-with-leading-zeros"])
def cert_serial(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def cert_sandbox(providers, tmp_path: Path, cert_serial: str):
    server = embedded.provider_sandbox(
        tmp_path, appid="wx-keyun-sandbox", wechat_secret="w", sms_key="s",
        wxpay={"mchid": "1900000001", "merchant_public": providers.merchant_public,
               "platform_private": providers.platform_private,
               "platform_serial": "PUB_KEY_ID_0000000000000001",
               "v3_key": TEST_SECRETS["KEYUN_WECHATPAY_API_V3_KEY"],
               "cert_serial": cert_serial})
    server.start()
    yield f"http://{server.host}:{server.port}"
    server.stop()


def notice(providers, serial: str, out_trade_no: str) -> tuple[dict, bytes]:
    resource = encrypt_resource(TEST_SECRETS["KEYUN_WECHATPAY_API_V3_KEY"].encode(), {
        "mchid": "1900000001", "appid": "wx-keyun-sandbox", "out_trade_no": out_trade_no,
        "trade_state": "SUCCESS", "amount": {"total": 100}}, "transaction")
    body = json.dumps({"resource": resource}).encode()
    ts, nonce = str(int(time.time())), secrets.token_hex(8)
    return ({"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": serial,
             "Wechatpay-Signature": sign(load_private(providers.platform_private),
                                         f"{ts}\n{nonce}\n{body.decode()}\n")}, body)


@pytest.mark.gen_test(timeout=60)
async def test_certificate_mode_downloads_once_and_verifies(providers, cert_sandbox,
                                                            cert_serial: str) -> None:
    key_pem = Path(providers.env["KEYUN_WECHATPAY_PRIVATE_KEY_FILE"]).read_text()  # noqa: ASYNC240
    provider = WeChatPay(WeChatPayConfig(
        api_base=cert_sandbox, mchid="1900000001", appid="wx-keyun-sandbox",
        serial_no="KEYUN-DEV-MERCHANT", private_key_pem=key_pem,
        api_v3_key=TEST_SECRETS["KEYUN_WECHATPAY_API_V3_KEY"], platform_serial="",
        platform_public_key_pem="", notify_url="http://127.0.0.1:1/notify"))
    params = await provider.start(Attempt("CERT-1", "KY1", 100, "t", {"openid": "o1"}),
                                  "wechat_jsapi")
    assert params["package"].startswith("prepay_id=")
    assert provider.certificate_downloads == 1  # the first answer named an unknown serial
    assert (await provider.query("CERT-1")).state == "pending"
    assert provider.certificate_downloads == 1  # known now

    for _ in range(3):  # forged serials cannot make us download again and again
        headers, body = notice(providers, "DEADBEEF", "CERT-1")
        with pytest.raises(NotificationRejected):
            await provider.parse_notification(headers, body)
    assert provider.certificate_downloads == 1
    headers, body = notice(providers, cert_serial, "CERT-1")
    state = await provider.parse_notification(headers, body)
    assert state.state == "paid" and state.amount == 100

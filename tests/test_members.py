"""Passenger sign-in and frequent passengers over real HTTP, against the provider sandbox."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from server.services.realname import check_char
from tests.support import ApiClient

SAMPLE = "11010519491231002X"


def phone() -> str:
    return "139" + str(uuid.uuid4().int)[:8]


async def wechat_tokens(api: ApiClient, openid: str) -> dict:
    code = (await api.post("/sandbox/wechat/login-code", {"openid": openid})).body["code"]
    resp = await api.post("/api/v1/auth/wechat", {"code": code})
    assert resp.status == 200, resp.text
    return resp.body


@pytest.mark.gen_test
async def test_wechat_login_makes_one_member_per_openid(api: ApiClient) -> None:
    openid = "o-" + uuid.uuid4().hex
    first = await wechat_tokens(api, openid)
    again = await wechat_tokens(api, openid)
    assert first["member"]["id"] == again["member"]["id"] and first["member"]["wechat"]
    me = await api.get("/api/v1/me", token=first["token"])
    assert me.body == {"kind": "member", "id": first["member"]["id"], "role": "passenger"}
    # the same code twice: WeChat says it is used
    code = (await api.post("/sandbox/wechat/login-code", {"openid": openid})).body["code"]
    assert (await api.post("/api/v1/auth/wechat", {"code": code})).status == 200
    reused = await api.post("/api/v1/auth/wechat", {"code": code})
    assert reused.status == 401 and reused.error_code == "WECHAT_CODE_INVALID"
    forged = await api.post("/api/v1/auth/wechat", {"code": "made-up"})
    assert forged.error_code == "WECHAT_CODE_INVALID"


@pytest.mark.gen_test
async def test_sms_login_codes_are_single_use_and_limited(api: ApiClient, db) -> None:
    number = phone()
    sent = await api.post("/api/v1/auth/sms/send", {"phone": number})
    assert sent.status == 200 and sent.body["sent"]
    again = await api.post("/api/v1/auth/sms/send", {"phone": number})
    assert again.status == 429 and again.error_code == "SMS_TOO_FREQUENT"
    assert int(again.headers.get("Retry-After", "0")) > 0 or again.body["error"]["retry_after"]
    code = (await api.get(f"/sandbox/sms/last?phone={number}")).body["code"]
    wrong = "000000" if code != "000000" else "111111"
    assert (await api.post("/api/v1/auth/sms/login", {"phone": number, "code": wrong})
            ).error_code == "SMS_CODE_INVALID"
    ok = await api.post("/api/v1/auth/sms/login", {"phone": number, "code": code})
    assert ok.status == 200 and ok.body["member"]["phone"] == number[:3] + "****" + number[-4:]
    reused = await api.post("/api/v1/auth/sms/login", {"phone": number, "code": code})
    assert reused.status == 401 and reused.error_code == "SMS_CODE_INVALID"
    # the phone is stored encrypted, found by blind index
    member = await db.members.find_one({"_id": ok.body["member"]["id"]})
    assert number not in str(member) and member["phone_enc"].startswith("v1.")


@pytest.mark.gen_test
async def test_sms_code_dies_after_five_wrong_tries(api: ApiClient) -> None:
    number = phone()
    await api.post("/api/v1/auth/sms/send", {"phone": number})
    code = (await api.get(f"/sandbox/sms/last?phone={number}")).body["code"]
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        await api.post("/api/v1/auth/sms/login", {"phone": number, "code": wrong})
    late = await api.post("/api/v1/auth/sms/login", {"phone": number, "code": code})
    assert late.error_code == "SMS_CODE_INVALID"


@pytest.mark.gen_test
async def test_concurrent_logins_with_one_code_succeed_once(api: ApiClient) -> None:
    number = phone()
    await api.post("/api/v1/auth/sms/send", {"phone": number})
    code = (await api.get(f"/sandbox/sms/last?phone={number}")).body["code"]
    results = await asyncio.gather(*[api.post("/api/v1/auth/sms/login",
                                              {"phone": number, "code": code})
                                     for _ in range(6)])
    assert [r.status for r in results].count(200) == 1


@pytest.mark.gen_test
async def test_bad_phones(api: ApiClient) -> None:
    for bad in ("12345678901", "1381234567", "abcdefghijk"):
        resp = await api.post("/api/v1/auth/sms/send", {"phone": bad})
        assert resp.status == 400 and resp.error_code == "INVALID_PHONE"


@pytest.mark.gen_test
async def test_frequent_passengers_real_name_masked_and_private(api: ApiClient, db) -> None:
    mine = (await wechat_tokens(api, "o-" + uuid.uuid4().hex))["token"]
    theirs = (await wechat_tokens(api, "o-" + uuid.uuid4().hex))["token"]
    child_id = "44010620150601123" + check_char("44010620150601123")
    added = await api.post("/api/v1/me/passengers", {"name": "张三", "id_type": "resident_id",
                                                     "id_no": SAMPLE.lower()}, token=mine)
    assert added.status == 201, added.text
    assert added.body["id_no"] == "1101**********002X" and SAMPLE not in added.text
    await api.post("/api/v1/me/passengers", {"name": "张小明", "id_type": "resident_id",
                                             "id_no": child_id, "ticket_type": "child"},
                   token=mine)
    dup = await api.post("/api/v1/me/passengers", {"name": "张三", "id_type": "resident_id",
                                                   "id_no": SAMPLE}, token=mine)
    assert dup.status == 409 and dup.error_code == "PASSENGER_EXISTS"
    bad = await api.post("/api/v1/me/passengers", {"name": "李四", "id_type": "resident_id",
                                                   "id_no": "110105194912310021"}, token=mine)
    assert bad.status == 422 and bad.error_code == "INVALID_ID_NUMBER"
    listed = await api.get("/api/v1/me/passengers", token=mine)
    assert [p["name"] for p in listed.body["passengers"]] == ["张三", "张小明"]
    assert (await api.get("/api/v1/me/passengers", token=theirs)).body["passengers"] == []
    # someone else's passenger cannot be removed, and cannot even be told apart from none
    other = await api.request("DELETE", f"/api/v1/me/passengers/{added.body['id']}",
                              token=theirs)
    assert other.status == 404 and other.error_code == "PASSENGER_NOT_FOUND"
    stored = await db.passengers.find_one({"_id": added.body["id"]})
    assert SAMPLE not in str(stored)
    gone = await api.request("DELETE", f"/api/v1/me/passengers/{added.body['id']}", token=mine)
    assert gone.status == 204
    staff = (await api.login("operator"))["token"]
    assert (await api.get("/api/v1/me/passengers", token=staff)).status == 403

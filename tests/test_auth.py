"""Staff sign-in, access tokens, refresh rotation and reuse detection, roles, scopes, audit."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
import uuid

import jwt
import pytest

from tests.reliability import record
from tests.support import TEST_JWT_SECRET, ApiClient

LOGIN = "/api/v1/auth/staff"
REFRESH = "/api/v1/auth/refresh"


def _claims(**over):
    now = int(time.time())
    claims = {"iss": "keyun", "aud": "keyun-api", "iat": now, "nbf": now, "exp": now + 600,
              "sub": "stf_demo_operator", "kind": "staff", "role": "operator",
              "username": "operator"}
    claims.update(over)
    return claims


async def _new_staff(api: ApiClient, role: str = "finance", **scope) -> tuple[str, str]:
    operator = (await api.login("operator"))["token"]
    username = f"t{uuid.uuid4().hex[:10]}"
    password = "correct-horse-battery"
    resp = await api.post("/api/v1/admin/staff", {"username": username, "password": password,
                                                  "role": role, **scope}, token=operator)
    assert resp.status == 201, resp.text
    return username, password


@pytest.mark.gen_test(timeout=60)  # eight Argon2 checks: seconds on a busy 2-core machine
async def test_every_staff_role_can_sign_in_and_sees_its_role(api: ApiClient) -> None:
    for role in ("agent", "phone_agent", "kiosk", "gate", "station_staff", "operator",
                 "finance", "authority"):
        tokens = await api.login(role)
        assert tokens["token_type"] == "Bearer"
        assert tokens["expires_in"] == 900
        assert tokens["staff"]["role"] == role
        assert "password_hash" not in tokens["staff"]
        me = await api.get("/api/v1/me", token=tokens["token"])
        assert me.status == 200
        assert me.body["role"] == role and me.body["kind"] == "staff"


@pytest.mark.gen_test
async def test_wrong_password_and_unknown_user_look_the_same(api: ApiClient) -> None:
    wrong = await api.post(LOGIN, {"username": "operator", "password": "nope"})
    unknown = await api.post(LOGIN, {"username": "nobody-here", "password": "nope"})
    assert wrong.status == unknown.status == 401
    assert wrong.error_code == unknown.error_code == "INVALID_CREDENTIALS"
    assert wrong.body["error"]["message"] == unknown.body["error"]["message"]


@pytest.mark.gen_test
async def test_expired_token_is_refused_with_its_own_code(api: ApiClient) -> None:
    token = jwt.encode(_claims(iat=int(time.time()) - 2000, nbf=int(time.time()) - 2000,
                               exp=int(time.time()) - 60), TEST_JWT_SECRET, algorithm="HS256")
    resp = await api.get("/api/v1/me", token=token)
    assert resp.status == 401 and resp.error_code == "TOKEN_EXPIRED"


@pytest.mark.reliability("R11")
@pytest.mark.gen_test
async def test_forged_tokens_are_refused(api: ApiClient) -> None:
    good = (await api.login("gate"))["token"]
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "operator"
    promoted = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    forged = [
        jwt.encode(_claims(), "another-secret-another-secret-another!", algorithm="HS256"),
        f"{header}.{promoted}.{signature}",  # role changed, old signature
        f"{none_header}.{promoted}.",  # alg=none
        jwt.encode(_claims(aud="someone-else"), TEST_JWT_SECRET, algorithm="HS256"),
        jwt.encode(_claims(iss="not-keyun"), TEST_JWT_SECRET, algorithm="HS256"),
        "not.a.jwt",
        good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
    ]
    for token in forged:
        resp = await api.get("/api/v1/me", token=token)
        assert resp.status == 401, token
        assert resp.error_code == "TOKEN_INVALID", token
    resp = await api.get("/api/v1/me", headers={"Authorization": f"Basic {good}"})
    assert resp.error_code == "TOKEN_INVALID"
    record("R11", load=f"{len(forged) + 1} forged access tokens",
           faults="another secret, a role changed under the old signature, alg=none, wrong "
                  "audience, wrong issuer, garbage, a cut signature, the wrong scheme",
           checked="the answer to each",
           figure=f"{len(forged) + 1} of {len(forged) + 1} refused TOKEN_INVALID (expired "
                  "ones TOKEN_EXPIRED, in another test)")


@pytest.mark.gen_test
async def test_missing_token_and_wrong_role(api: ApiClient, db) -> None:
    resp = await api.get("/api/v1/admin/staff")
    assert resp.status == 401 and resp.error_code == "AUTH_REQUIRED"
    gate = await api.login("gate")
    resp = await api.get("/api/v1/admin/staff", token=gate["token"])
    assert resp.status == 403 and resp.error_code == "FORBIDDEN"
    # the denied staff action is in the audit trail
    entry = await db.audit.find_one({"action": "access.denied", "actor.username": "gate"},
                                    sort=[("at", -1)])
    assert entry is not None and entry["target"] == "/api/v1/admin/staff"
    assert entry["outcome"] == "denied"


@pytest.mark.gen_test
async def test_refresh_rotates_and_reuse_revokes_the_whole_sign_in(api: ApiClient) -> None:
    first = await api.login("finance")
    second = await api.post(REFRESH, {"refresh_token": first["refresh_token"]})
    assert second.status == 200, second.text
    assert second.body["refresh_token"] != first["refresh_token"]
    assert (await api.get("/api/v1/me", token=second.body["token"])).status == 200

    # the first refresh token again: stolen and replayed → everything of this sign-in revoked
    reuse = await api.post(REFRESH, {"refresh_token": first["refresh_token"]})
    assert reuse.status == 401 and reuse.error_code == "REFRESH_TOKEN_REUSED"
    after = await api.post(REFRESH, {"refresh_token": second.body["refresh_token"]})
    assert after.status == 401 and after.error_code == "REFRESH_TOKEN_INVALID"

    # another sign-in of the same user is untouched
    other = await api.login("finance")
    assert (await api.post(REFRESH, {"refresh_token": other["refresh_token"]})).status == 200


@pytest.mark.gen_test
async def test_concurrent_refreshes_with_one_token_succeed_once(api: ApiClient) -> None:
    tokens = await api.login("phone_agent")
    results = await asyncio.gather(*[
        api.post(REFRESH, {"refresh_token": tokens["refresh_token"]}) for _ in range(8)])
    assert sorted(r.status for r in results).count(200) == 1


@pytest.mark.gen_test
async def test_unknown_refresh_token(api: ApiClient) -> None:
    resp = await api.post(REFRESH, {"refresh_token": "rt_" + "x" * 43})
    assert resp.status == 401 and resp.error_code == "REFRESH_TOKEN_INVALID"


@pytest.mark.gen_test
async def test_logout_revokes_the_refresh_token(api: ApiClient) -> None:
    tokens = await api.login("kiosk")
    resp = await api.post("/api/v1/auth/logout", {"refresh_token": tokens["refresh_token"]},
                          token=tokens["token"])
    assert resp.status == 204
    resp = await api.post(REFRESH, {"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401


@pytest.mark.gen_test
async def test_secrets_are_stored_hashed(api: ApiClient, db) -> None:
    tokens = await api.login("operator")
    staff = await db.staff.find_one({"username": "operator"})
    assert staff["password_hash"].startswith("$argon2id$")
    assert await db.refresh_tokens.count_documents({"token_hash": tokens["refresh_token"]}) == 0
    assert await db.refresh_tokens.count_documents({}) > 0


@pytest.mark.gen_test(timeout=30)
async def test_repeated_failures_lock_the_account_out_for_that_address(api: ApiClient) -> None:
    username, password = await _new_staff(api)
    for _ in range(5):
        resp = await api.post(LOGIN, {"username": username, "password": "wrong-password"})
        assert resp.error_code == "INVALID_CREDENTIALS"
    locked = await api.post(LOGIN, {"username": username, "password": password})
    assert locked.status == 429 and locked.error_code == "TOO_MANY_ATTEMPTS"
    assert int(locked.headers["Retry-After"]) > 0


@pytest.mark.gen_test(timeout=60)
async def test_a_stranger_cannot_lock_a_user_out_from_elsewhere(api: ApiClient) -> None:
    username, password = await _new_staff(api)
    stranger = ApiClient(api.base_url, address="203.0.113.66")
    for _ in range(5):
        resp = await stranger.post(LOGIN, {"username": username, "password": "guess-guess"})
        assert resp.error_code == "INVALID_CREDENTIALS"
    locked = await stranger.post(LOGIN, {"username": username, "password": password})
    assert locked.status == 429 and locked.error_code == "TOO_MANY_ATTEMPTS"
    # the real user, at the station's own address, is not locked out
    at_work = ApiClient(api.base_url, address="198.51.100.20")
    assert (await at_work.post(LOGIN, {"username": username, "password": password})
            ).status == 200
    # a forged X-Forwarded-For from an untrusted source is not believed
    assert stranger.address != at_work.address


@pytest.mark.gen_test(timeout=60)
async def test_an_address_that_keeps_failing_is_slowed_down(api: ApiClient) -> None:
    spray = ApiClient(api.base_url, address="203.0.113.77")
    for n in range(10):  # ten usernames, twice each: within the free failures
        resp = await spray.post(LOGIN, {"username": f"nobody{n}", "password": "x" * 10})
        assert resp.error_code == "INVALID_CREDENTIALS"
    first = await spray.post(LOGIN, {"username": "nobody-a", "password": "x" * 10})
    assert first.error_code == "INVALID_CREDENTIALS"  # the eleventh: a 2-second wait begins
    wait = await spray.post(LOGIN, {"username": "operator", "password": "keyun-demo"})
    assert wait.status == 429 and 0 < int(wait.headers["Retry-After"]) <= 2
    await asyncio.sleep(2.1)
    second = await spray.post(LOGIN, {"username": "nobody-b", "password": "x" * 10})
    assert second.error_code == "INVALID_CREDENTIALS"
    longer = await spray.post(LOGIN, {"username": "nobody-c", "password": "x" * 10})
    assert longer.status == 429 and 2 < int(longer.headers["Retry-After"]) <= 4
    # everyone else signs in as usual
    assert (await api.post(LOGIN, {"username": "operator", "password": "keyun-demo"})
            ).status == 200


@pytest.mark.gen_test
async def test_disabled_account_cannot_sign_in_or_refresh(api: ApiClient, db) -> None:
    username, password = await _new_staff(api)
    tokens = await api.login(username, password)
    await db.staff.update_one({"username": username}, {"$set": {"status": "disabled"}})
    resp = await api.post(LOGIN, {"username": username, "password": password})
    assert resp.status == 403 and resp.error_code == "ACCOUNT_DISABLED"
    resp = await api.post(REFRESH, {"refresh_token": tokens["refresh_token"]})
    assert resp.status == 403 and resp.error_code == "ACCOUNT_DISABLED"


@pytest.mark.gen_test
async def test_staff_creation_checks_scope_and_duplicates_and_is_audited(api: ApiClient,
                                                                         db) -> None:
    operator = (await api.login("operator"))["token"]
    resp = await api.post("/api/v1/admin/staff", {"username": "gate2x", "password": "x" * 12,
                                                  "role": "gate"}, token=operator)
    assert resp.status == 422 and resp.error_code == "SCOPE_REQUIRED"
    assert resp.body["error"]["field"] == "station_id"
    resp = await api.post("/api/v1/admin/staff", {"username": "gate2x", "password": "x" * 12,
                                                  "role": "gate", "station_id": "nope"},
                          token=operator)
    assert resp.status == 404 and resp.error_code == "STATION_NOT_FOUND"
    resp = await api.post("/api/v1/admin/staff", {"username": "operator", "password": "x" * 12,
                                                  "role": "finance"}, token=operator)
    assert resp.status == 409 and resp.error_code == "USERNAME_TAKEN"

    username, _ = await _new_staff(api, "gate", station_id="440106001")
    entry = await db.audit.find_one({"action": "staff.create", "details.username": username})
    assert entry["actor"]["username"] == "operator"
    assert entry["request_id"] and entry["ip"] == api.address  # the client, not the proxy
    trail = await api.get("/api/v1/admin/audit?action=staff.create", token=operator)
    assert any(e["details"]["username"] == username for e in trail.body["entries"])
    logins = await api.get("/api/v1/admin/audit?action=auth.staff_login&limit=5", token=operator)
    assert logins.status == 200 and len(logins.body["entries"]) == 5
    older = await api.get("/api/v1/admin/audit?action=auth.staff_login&before="
                          + urllib.parse.quote(logins.body["entries"][-1]["at"]), token=operator)
    assert older.status == 200
    assert all(e["at"] < logins.body["entries"][-1]["at"] for e in older.body["entries"])
    naive = await api.get("/api/v1/admin/audit?before=2026-11-24T10:00:00", token=operator)
    assert naive.status == 400 and naive.error_code == "INVALID_QUERY", naive.text


@pytest.mark.gen_test
async def test_idempotency_key_replays_the_first_answer(api: ApiClient, db) -> None:
    operator = (await api.login("operator"))["token"]
    key = uuid.uuid4().hex
    body = {"username": f"i{key[:12]}", "password": "x" * 12, "role": "finance"}
    first = await api.post("/api/v1/admin/staff", body, token=operator,
                           headers={"Idempotency-Key": key})
    again = await api.post("/api/v1/admin/staff", body, token=operator,
                           headers={"Idempotency-Key": key})
    assert first.status == again.status == 201
    assert again.body == first.body
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await db.staff.count_documents({"username": body["username"]}) == 1
    other = await api.post("/api/v1/admin/staff", {**body, "role": "operator"}, token=operator,
                           headers={"Idempotency-Key": key})
    assert other.status == 422 and other.error_code == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.gen_test
async def test_authority_sees_only_its_region(api: ApiClient) -> None:
    city = (await api.login("authority"))["token"]  # 广州市 440100
    resp = await api.get("/api/v1/admin/stations", token=city)
    assert resp.status == 200
    divisions = {s["division"] for s in resp.body["stations"]}
    assert divisions and all(d.startswith("4401") for d in divisions)
    resp = await api.get("/api/v1/admin/stations?division=440300", token=city)
    assert resp.status == 403 and resp.error_code == "OUT_OF_SCOPE"

    province = (await api.login("authority_gd"))["token"]  # 广东省 440000
    resp = await api.get("/api/v1/admin/stations", token=province)
    assert len({s["city"] for s in resp.body["stations"]}) >= 8
    resp = await api.get("/api/v1/admin/stations?division=440300", token=province)
    assert resp.status == 200
    assert {s["city"] for s in resp.body["stations"]} == {"深圳"}


@pytest.mark.gen_test
async def test_station_roles_see_only_their_station(api: ApiClient) -> None:
    gate = await api.login("gate")
    resp = await api.get("/api/v1/admin/stations", token=gate["token"])
    assert [s["id"] for s in resp.body["stations"]] == [gate["staff"]["station_id"]]


@pytest.mark.gen_test(timeout=60)
async def test_refresh_and_tokens_follow_the_staff_record(api: ApiClient, db) -> None:
    """A refresh carries the account's current role and scope; a disabled account's access
    tokens stop working (well within a minute) and its refresh tokens give nothing."""
    import secrets

    operator = (await api.login("operator"))["token"]
    username = "auth.follow." + secrets.token_hex(3)
    created = await api.post("/api/v1/admin/staff", {
        "username": username, "password": "follow-pass-1", "role": "authority",
        "region": "440100"}, token=operator)
    assert created.status == 201, created.text
    staff_id = created.body["id"]
    signed = await api.login(username, "follow-pass-1")
    # the operator widens the scope to the province: the next refresh says so
    changed = await api.request("PATCH", f"/api/v1/admin/staff/{staff_id}",
                                json_body={"region": "440000"}, token=operator)
    assert changed.status == 200 and changed.body["region"] == "440000", changed.text
    # the change ended the sign-in: the old access token and refresh token are done
    old = await api.get("/api/v1/me", token=signed["token"])
    assert old.status == 401 and old.error_code == "TOKEN_REVOKED"
    assert (await api.post("/api/v1/auth/refresh",
                           {"refresh_token": signed["refresh_token"]})).status == 401
    await asyncio.sleep(1.1)  # tokens carry whole seconds: sign in after the change's second
    again = await api.login(username, "follow-pass-1")
    me = (await api.get("/api/v1/me", token=again["token"])).body
    assert me["region"] == "440000"
    # a stale refresh-token subject is not trusted: what the record says wins
    await db.staff.update_one({"_id": staff_id}, {"$set": {"region": "440300"}})
    refreshed = await api.post("/api/v1/auth/refresh",
                               {"refresh_token": again["refresh_token"]})
    assert refreshed.status == 200
    assert (await api.get("/api/v1/me", token=refreshed.body["token"])).body["region"] == \
        "440300"
    # disabled: access tokens refused at once, refresh refused
    disabled = await api.request("PATCH", f"/api/v1/admin/staff/{staff_id}",
                                 json_body={"status": "disabled"}, token=operator)
    assert disabled.status == 200 and disabled.body["status"] == "disabled"
    gone = await api.get("/api/v1/admin/stations", token=refreshed.body["token"])
    assert gone.status == 401 and gone.error_code == "TOKEN_REVOKED"
    assert (await api.post("/api/v1/auth/refresh",
                           {"refresh_token": refreshed.body["refresh_token"]})).status == 401
    assert (await api.post("/api/v1/auth/staff", {"username": username,
                                                  "password": "follow-pass-1"})
            ).error_code == "ACCOUNT_DISABLED"
    # a role that needs a scope cannot lose it; nobody but an operator changes accounts
    bad = await api.request("PATCH", f"/api/v1/admin/staff/{staff_id}",
                            json_body={"role": "gate"}, token=operator)
    assert bad.status == 422 and bad.error_code == "SCOPE_REQUIRED"
    finance = (await api.login("finance"))["token"]
    assert (await api.request("PATCH", f"/api/v1/admin/staff/{staff_id}",
                              json_body={"status": "active"}, token=finance)).status == 403
    assert await db.audit.count_documents({"action": "staff.update", "target": staff_id}) == 2

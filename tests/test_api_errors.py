"""Error format at the edge: bad JSON, wrong types, missing fields, unknown routes, 4xx not 5xx."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from tests.support import RELIABILITY, ApiClient

LOGIN = "/api/v1/auth/staff"


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    error = resp.body["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == resp.headers["X-Request-Id"]
    return error


@pytest.mark.gen_test
async def test_malformed_json_is_a_400_with_a_stable_code(api: ApiClient) -> None:
    for raw in ("{bad", "{'single': 'quotes'}", '{"a": 1', "\xff\xfe", "null"):
        resp = await api.request("POST", LOGIN, raw=raw.encode("latin-1"),
                                 headers={"Content-Type": "application/json"})
        assert_error(resp, 400, "MALFORMED_JSON")


@pytest.mark.gen_test
async def test_wrong_type_names_the_field(api: ApiClient) -> None:
    resp = await api.post(LOGIN, {"username": 42, "password": "x"})
    error = assert_error(resp, 400, "INVALID_TYPE")
    assert error["field"] == "username"


@pytest.mark.gen_test
async def test_body_that_is_not_an_object(api: ApiClient) -> None:
    resp = await api.post(LOGIN, ["operator", "keyun-demo"])
    error = assert_error(resp, 400, "INVALID_TYPE")
    assert error["field"] == ""


@pytest.mark.gen_test
async def test_missing_field_names_the_field(api: ApiClient) -> None:
    resp = await api.post(LOGIN, {"username": "operator"})
    error = assert_error(resp, 400, "MISSING_FIELD")
    assert error["field"] == "password"


@pytest.mark.gen_test
async def test_unknown_field_is_refused(api: ApiClient) -> None:
    resp = await api.post(LOGIN, {"username": "operator", "password": "x", "role": "operator"})
    error = assert_error(resp, 400, "UNKNOWN_FIELD")
    assert error["field"] == "role"


@pytest.mark.gen_test
async def test_bad_query_parameter(api: ApiClient) -> None:
    resp = await api.get("/api/v1/stations?limit=lots")
    assert assert_error(resp, 400, "INVALID_QUERY")["field"] == "limit"
    resp = await api.get("/api/v1/stations?limit=0")
    assert assert_error(resp, 400, "INVALID_QUERY")["field"] == "limit"


@pytest.mark.gen_test
async def test_unknown_route_is_a_json_404(api: ApiClient) -> None:
    for method in ("GET", "POST", "DELETE"):
        resp = await api.request(method, "/api/v1/no-such-thing")
        assert_error(resp, 404, "NOT_FOUND")


@pytest.mark.gen_test
async def test_wrong_method_is_a_json_405(api: ApiClient) -> None:
    resp = await api.request("DELETE", "/api/v1/auth/staff")
    assert_error(resp, 405, "METHOD_NOT_ALLOWED")
    assert resp.headers["Allow"] == "POST"


@pytest.mark.gen_test(timeout=60)  # a request per route: seconds on a busy machine
async def test_every_route_names_its_methods_on_a_405(api: ApiClient) -> None:
    """RFC 9110: a 405 carries Allow, and Allow lists exactly the documented methods."""
    spec = (await api.get("/api/openapi.json")).body
    for path, ops in spec["paths"].items():
        documented = {m.upper() for m in ops}
        url = re.sub(r"\{\w+\}", "x", path)
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
            resp = await api.request(method, url)
            assert resp.status == 405, (method, path, resp.status)
            assert set(resp.headers["Allow"].split(", ")) == documented, (method, path)


@pytest.mark.gen_test
async def test_deposit_with_an_odd_outlet_and_number_forms_is_never_a_500(api: ApiClient,
                                                                          db) -> None:
    finance = (await api.login("finance"))["token"]
    outlet = "OUT440304001"
    for odd in ("%C3%86%29%C3%91", "x" * 300, "OUT%00X", "%E4%B8%AD"):
        resp = await api.post(f"/api/v1/admin/outlets/{odd}/deposits",
                              {"amount": 100, "reference": "odd"}, token=finance)
        assert resp.status == 404 and resp.error_code == "OUTLET_NOT_FOUND", (odd, resp.text)
    for amount in ("1.5", "1e400", str(10**20), "-1", '"100"', "NaN"):
        resp = await api.request("POST", f"/api/v1/admin/outlets/{outlet}/deposits",
                                 raw=f'{{"amount": {amount}, "reference": "num"}}',
                                 token=finance)
        assert 400 <= resp.status < 500, (amount, resp.text)
    before = (await db.outlets.find_one({"_id": outlet})).get("balance", 0)
    written = await api.request("POST", f"/api/v1/admin/outlets/{outlet}/deposits",
                                raw='{"amount": 2.0e2, "reference": "REF-FLOAT-FORM"}',
                                token=finance)  # one number, however it is written
    assert written.status == 200, written.text
    stored = await db.outlets.find_one({"_id": outlet})
    assert stored["balance"] == before + 200 and isinstance(stored["balance"], int)


@pytest.mark.gen_test
async def test_request_id_is_echoed_when_sane_and_replaced_when_not(api: ApiClient) -> None:
    resp = await api.get("/healthz", headers={"X-Request-Id": "client-abc-12345"})
    assert resp.headers["X-Request-Id"] == "client-abc-12345"
    resp = await api.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert resp.headers["X-Request-Id"] != "bad id\twith spaces"
    assert len(resp.headers["X-Request-Id"]) == 32


@pytest.mark.gen_test
async def test_oversized_body_is_refused(api: ApiClient) -> None:
    big = '{"username": "' + "a" * 300_000 + '", "password": "x"}'
    resp = await api.request("POST", LOGIN, raw=big, headers={"Content-Type": "application/json"})
    assert_error(resp, 413, "BODY_TOO_LARGE")


@pytest.mark.gen_test
async def test_curl_style_form_content_type_still_reads_json(api: ApiClient) -> None:
    resp = await api.request("POST", LOGIN, raw='{"username": "operator", "password": "nope"}',
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(resp, 401, "INVALID_CREDENTIALS")


# routes whose side effects would disturb the rest of the suite (or sign the caller out)
NOT_FUZZED = {"/api/v1/auth/logout", "/api/v1/gate/keys/rotate"}
# each hole of a path takes each of these, independently: garbage, and a real provider name so
# the garbage in the next hole gets past the first look-up
GARBAGE_PARAMS = ("x", "2026-13-01", "%E4%B8%AD%00", "9" * 200, "wechat")
GARBAGE_BODIES = ("", "{}", '{"unexpected": 1}', "[]", '"text"', "{bad",
                  '{"code": 5, "scans": "x", "amount": -1, "passengers": [1]}')
GARBAGE_QUERIES = ("", "?date=2026-13-01&limit=-1&station=x&since=-5",
                   "?limit=abc&before=zzz&from=&to=&status=%00")


def _hole_fillings(holes: int) -> list[tuple[str, ...]]:
    """Each hole takes each garbage value while the others hold a real provider name, and all
    holes take the same value together (every value in every hole, independently; not every
    combination, which grows as the power of the holes)."""
    real = GARBAGE_PARAMS[-1]
    fillings = {tuple(value for _ in range(holes)) for value in GARBAGE_PARAMS}
    for hole in range(holes):
        for value in GARBAGE_PARAMS:
            fillings.add(tuple(value if i == hole else real for i in range(holes)))
    return sorted(fillings)


def _garbage(fillings: list[tuple[str, ...]], tokens: list[str | None],
             bodies: tuple[str | None, ...]) -> list[tuple[Any, ...]]:
    """Every caller with every path filling, query and body: each of them at least once
    (the longest list walked, the others in turn beside it), or with ``make reliability``
    every combination."""
    if RELIABILITY:
        return list(itertools.product(fillings, tokens, GARBAGE_QUERIES, bodies))
    lists = (fillings, GARBAGE_QUERIES, bodies)
    turns = max(len(x) for x in lists)
    return [(fillings[k % len(fillings)], token, GARBAGE_QUERIES[k % len(GARBAGE_QUERIES)],
             bodies[k % len(bodies)]) for token in tokens for k in range(turns)]


@pytest.mark.gen_test(timeout=600)
async def test_no_route_answers_5xx_to_garbage(api: ApiClient) -> None:
    # every route of the OpenAPI document, as nobody, a passenger and staff of several roles,
    # with nonsense in its path, query and body: 4xx each time, never a 5xx
    import asyncio

    from tests.booking_support import member

    spec = (await api.get("/api/openapi.json")).body
    tokens = [None, await member(api)] + [
        (await api.login(role))["token"] for role in ("operator", "finance", "gate", "agent")]
    calls = []
    for path, ops in spec["paths"].items():
        if path in NOT_FUZZED:
            continue
        holes = path.count("{")
        for method in ops:
            method = method.upper()
            bodies = GARBAGE_BODIES if method in ("POST", "PUT") else (None,)
            for params, token, query, body in _garbage(_hole_fillings(holes), tokens, bodies):
                url = path
                for param in params:
                    url = url[:url.index("{")] + param + url[url.index("}") + 1:]
                calls.append((method, url + query, token, body))
    failures: list[tuple[int, str, str, str | None]] = []
    gate = asyncio.Semaphore(16)

    async def call(method: str, url: str, token: str | None, body: str | None) -> None:
        async with gate:
            resp = await api.request(method, url, raw=body, token=token,
                                     headers={"Content-Type": "application/json"})
        if resp.status >= 500 and not (
                url.startswith("/readyz") and resp.status == 503
                and isinstance(resp.body, dict) and "checks" in resp.body):
            # (a readiness probe says 503 when a store is slower than 2 s: its documented
            # answer under load, not a failure)
            failures.append((resp.status, method, url, body))

    await asyncio.gather(*[call(*c) for c in calls])
    assert len(calls) > (20_000 if RELIABILITY else 1500), len(calls)
    assert not failures, failures[:10]

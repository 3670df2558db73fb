"""Error format at the edge: bad JSON, wrong types, missing fields, unknown routes, 4xx not 5xx."""

from __future__ import annotations

import pytest

from tests.support import ApiClient

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

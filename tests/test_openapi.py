"""The OpenAPI document: complete, 3.1, and built from the schemas the handlers enforce."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from server.app import api_routes
from tests.support import ApiClient


@pytest.mark.gen_test
async def test_document_lists_every_route_with_its_schemas(api: ApiClient) -> None:
    resp = await api.get("/api/openapi.json")
    assert resp.status == 200
    doc = resp.body
    assert doc["openapi"] == "3.1.0"
    templates = {spec.name for spec in api_routes()}
    assert templates <= set(doc["paths"]), templates - set(doc["paths"])
    login = doc["paths"]["/api/v1/auth/staff"]["post"]
    assert login["requestBody"]["content"]["application/json"]["schema"]["required"] == \
        ["username", "password"]
    assert "401" in login["responses"] and "400" in login["responses"]
    staff = doc["paths"]["/api/v1/admin/staff"]["post"]
    assert staff["x-roles"] == ["operator"] and staff["security"] == [{"bearer": []}]
    assert any(p["name"] == "Idempotency-Key" for p in staff["parameters"])
    for item in doc["paths"].values():
        for op in item.values():
            for media in op.get("requestBody", {}).get("content", {}).values():
                Draft202012Validator.check_schema(media["schema"])
    imports = doc["paths"]["/api/v1/admin/imports/{kind}"]["post"]["requestBody"]["content"]
    assert set(imports) == {"text/csv", "application/vnd.openxmlformats-officedocument."
                                        "spreadsheetml.sheet"}
    patch = doc["paths"]["/api/v1/admin/routes/{record_id}"]["patch"]
    assert any(p["name"] == "If-Match" and p["in"] == "header" and p["required"]
               for p in patch["parameters"])


@pytest.mark.gen_test
async def test_documented_schema_is_the_enforced_schema(api: ApiClient) -> None:
    """A body the document calls invalid is refused; one it calls valid gets past validation."""
    doc = (await api.get("/api/openapi.json")).body
    schema = doc["paths"]["/api/v1/auth/refresh"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    validator = Draft202012Validator(schema)
    bad, good = {"refresh_token": 7}, {"refresh_token": "rt_unknown"}
    assert not validator.is_valid(bad) and validator.is_valid(good)
    assert (await api.post("/api/v1/auth/refresh", bad)).error_code == "INVALID_TYPE"
    assert (await api.post("/api/v1/auth/refresh", good)).error_code == "REFRESH_TOKEN_INVALID"


@pytest.mark.gen_test
async def test_docs_page_is_swagger_ui_served_by_keyun(api: ApiClient) -> None:
    resp = await api.get("/api/docs")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
    assert 'id="swagger-ui"' in resp.text and "/admin/assets/apidocs-" in resp.text
    assert "connect-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "http://" not in resp.text and "https://" not in resp.text
    admin = await api.get("/admin/")
    assert admin.status == 200 and "管理后台" in admin.text

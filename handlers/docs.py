"""The OpenAPI 3.1 document, built from the ``@api`` declarations, and Swagger UI to read it.

Nothing here is kept by hand: paths come from the route templates, parameters from the
templates and query schemas, bodies and responses from the very schemas the handlers
validate with, error responses from the error table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tornado.web import RequestHandler, URLSpec

from handlers.base import ApiHandler, Operation, api, route
from server.errors import ERRORS
from server.security import signing

METHODS = ("get", "post", "put", "patch", "delete")
ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "enum": sorted(ERRORS)},
                       "message": {"type": "string"},
                       "field": {"type": "string", "description": "the offending field"},
                       "request_id": {"type": "string"}},
        "additionalProperties": True}},
}


def operations(routes: list[URLSpec]) -> list[tuple[str, str, type[RequestHandler], Operation]]:
    """(template, method, handler class, operation) for every declared operation."""
    found = []
    for spec in routes:
        template = spec.name
        if not template:
            continue
        for method in METHODS:
            op = getattr(getattr(spec.handler_class, method, None), "operation", None)
            if isinstance(op, Operation):
                found.append((template, method, spec.handler_class, op))
    return found


def _error_codes(op: Operation) -> dict[int, list[str]]:
    codes = list(op.errors)
    if op.body is not None:
        codes += ["MALFORMED_JSON", "MISSING_FIELD", "INVALID_TYPE", "INVALID_VALUE",
                  "UNKNOWN_FIELD"]
    if op.query is not None:
        codes.append("INVALID_QUERY")
    if op.path:
        codes.append("INVALID_VALUE")
    # any request may carry a token, and a bad one is refused wherever it is sent
    codes += ["TOKEN_INVALID", "TOKEN_EXPIRED", "TOKEN_REVOKED"]
    if op.roles:
        codes += ["AUTH_REQUIRED", "FORBIDDEN"]
    if op.idempotent:
        codes += ["INVALID_VALUE", "IDEMPOTENCY_KEY_REUSED", "IDEMPOTENCY_IN_PROGRESS"]
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(ERRORS[code][0], []).append(code)
    return by_status


def _operation_object(template: str, method: str, handler: type[RequestHandler],
                      op: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": op.path.get(name, {"type": "string", "minLength": 1})}
        for name in _path_params(template)]
    if op.query:
        required = set(op.query.get("required", []))
        for name, schema in op.query.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in required,
                           "schema": schema,
                           **({"description": schema["description"]}
                              if "description" in schema else {})})
    for name, header in op.headers.items():
        params.append({"name": name, "in": "header", **header})
    if op.idempotent:
        params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 128,
                                  "pattern": r"^\S(.*\S)?$"},
                       "description": "Repeat the call safely: the same key returns the "
                                      "first answer."})
    ok: dict[str, Any] = {"description": op.summary}
    if op.status != 204:
        schema = op.response or {}
        ok["content"] = {op.content_type: {"schema": schema}}
    responses: dict[str, Any] = {str(op.status): ok}
    for status, codes in sorted(_error_codes(op).items()):
        responses[str(status)] = {
            "description": ", ".join(codes),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    obj: dict[str, Any] = {
        "operationId": f"{method}{handler.__name__.removesuffix('Handler')}",
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": params,
        "responses": responses,
        "security": [{"bearer": []}] if op.roles else [],
        "x-roles": list(op.roles or []),
    }
    if op.description:
        obj["description"] = op.description
    if op.body is not None:
        obj["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": op.body}}}
    elif op.upload:
        obj["requestBody"] = {"required": True, "content": {
            media: {"schema": {"type": "string", "minLength": 1, "contentMediaType": media}}
            for media in op.upload}}
    return obj


def _path_params(template: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", template)


def build_openapi(routes: list[URLSpec], server_url: str = "/") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared operation."""
    paths: dict[str, Any] = {}
    for template, method, handler, op in operations(routes):
        paths.setdefault(template, {})[method] = _operation_object(template, method, handler,
                                                                   op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Keyun API", "version": "1",
                 "description": "Provincial road-passenger networked ticketing platform "
                                "(省域道路客运联网售票系统). Money is integer fen; times are "
                                "ISO 8601 with offset."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
    }


def partner_openapi(routes: list[URLSpec]) -> dict[str, Any]:
    """The partner API's own document: its operations and how to sign a request."""
    doc = build_openapi(routes)
    doc["info"] = {"title": "Keyun partner API", "version": "1", "description": (
        "For third-party platforms selling intercity bus tickets. Every request carries "
        "X-Keyun-Key, X-Keyun-Timestamp (Unix seconds, within 300 s of our clock), "
        "X-Keyun-Nonce (8-64 characters, single use) and X-Keyun-Signature: the lowercase hex "
        "HMAC-SHA256, with the key's secret, of METHOD\\nPATH\\nCANONICAL_QUERY\\nTIMESTAMP"
        "\\nNONCE\\nhex(SHA-256(body)), where CANONICAL_QUERY is the query parameters sorted "
        "by name, each name and value percent-encoded (RFC 3986), joined name=value with &. "
        "A bad signature, a stale timestamp and a reused nonce are 401 SIGNATURE_INVALID, "
        "TIMESTAMP_OUT_OF_WINDOW and NONCE_REUSED. Money is integer fen.")}
    doc["info"]["x-signing-example"] = _signing_example()
    doc["info"]["description"] += (
        " x-signing-example below is a request signed with a made-up secret: check that your "
        "code gives the same string to sign and signature. Order and ticket events are "
        "POSTed to the partner's webhook_url (see webhooks), signed the same way with the "
        "partner's newest key; answer 2xx, or they are sent again after 2 s, 4 s, 8 s … "
        "(at most an hour apart, 16 times). X-Keyun-Delivery (and the body's id) names the "
        "event: one seen twice is the same event.")
    doc["webhooks"] = {"orderEvent": {"post": {
        "summary": "An order's status changed, or a ticket was refunded, voided or changed",
        "parameters": [{"name": name, "in": "header", "required": True,
                        "schema": {"type": "string"}} for name in (
            "X-Keyun-Key", "X-Keyun-Timestamp", "X-Keyun-Nonce", "X-Keyun-Signature",
            "X-Keyun-Event", "X-Keyun-Delivery")],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["id", "event", "at", "data"],
            "properties": {
                "id": {"type": "string", "description": "the event's delivery id"},
                "event": {"type": "string", "enum": [
                    "order.status", "ticket.refunded", "ticket.voided", "ticket.changed"]},
                "at": {"type": "string", "format": "date-time"},
                "data": {"type": "object", "properties": {
                    "order_no": {"type": "string"}, "ticket_no": {"type": "string"},
                    "status": {"type": "string"}, "from": {"type": ["string", "null"]},
                    "reason": {"type": "string"}, "amount": {"type": "integer"},
                    "refund_amount": {"type": "integer"}}}}}}}},
        "responses": {"200": {"description": "received (any 2xx)"}}}}}
    doc["components"]["securitySchemes"] = {"keyunSignature": {
        "type": "apiKey", "in": "header", "name": "X-Keyun-Signature",
        "description": "with X-Keyun-Key, X-Keyun-Timestamp and X-Keyun-Nonce; see above"}}
    for operations in doc["paths"].values():
        for operation in operations.values():
            if operation.get("security"):
                operation["security"] = [{"keyunSignature": []}]
    return doc


def _signing_example() -> dict[str, str]:
    """A request signed with a made-up secret, for partners to test their code against."""
    example = {"secret": "example-secret-not-a-real-key", "method": "POST",
               "path": "/partner/v1/orders", "query": "lang=zh&channel=app",
               "timestamp": "1764300000", "nonce": "9f1c2a7be34d",
               "body": '{"departure_id":"S440111001001-20261201"}'}
    text = signing.string_to_sign(example["method"], example["path"], example["query"],
                                  example["timestamp"], example["nonce"],
                                  example["body"].encode())
    return {**example, "string_to_sign": text,
            "signature": signing.signature(example["secret"], text)}


class OpenApiHandler(ApiHandler):
    @api("This OpenAPI 3.1 document", tags=("docs",))
    async def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=60")
        self.write_json(self.application.settings["openapi"])


class DocsPageHandler(ApiHandler):
    @api("This API in Swagger UI (from its npm package, built with the web app; try it out "
         "against this server)", tags=("docs",), content_type="text/html")
    async def get(self) -> None:
        page = DOCS_PAGE
        if not page.is_file():
            self.set_status(503)
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish("API 文档尚未构建：请用 make run 启动（它会构建 admin/web）。\n"
                        "The API docs page is not built: start Keyun with `make run`; the "
                        "document itself is at /api/openapi.json.\n")
            return
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Security-Policy", DOCS_CSP)
        self.finish(page.read_bytes())


# Swagger UI's own styles are inline; everything else, and every request, stays on this host
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
            "frame-ancestors 'none'")
DOCS_PAGE = Path(__file__).resolve().parent.parent / "admin" / "web" / "dist" / "api-docs.html"


default_handlers = [
    route("/api/openapi.json", OpenApiHandler),
    route("/api/docs", DocsPageHandler),
]

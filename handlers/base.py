"""The API edge: one base handler, the ``@api`` declaration, routes from path templates.

Every JSON endpoint derives from :class:`ApiHandler` and declares each method with
:func:`api`: who may call it, the schema of its body and query, its response schema and
the error codes it may return. The same declaration authorizes and validates the request and
feeds the OpenAPI document (``handlers.docs``), so the documentation cannot drift from the code.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from tornado import httputil
from tornado.web import GZipContentEncoding, HTTPError, RequestHandler, URLSpec

from server.context import client_ip_var, new_request_id, request_id_var
from server.encoded import Encoded
from server.errors import ERRORS, DomainError, aware_time, error_body
from server.logs import mask_pii
from server.schema import coerce_query, json_number, validate_body, validate_path
from server.security.addresses import client_address
from server.security.principal import ROLES, Principal

if TYPE_CHECKING:
    from server.app import Services
    from server.config import Settings
    from server.metrics import Metrics

log = logging.getLogger("keyun.api")
access_log = logging.getLogger("keyun.access")

PUBLIC: tuple[str, ...] = ()
"""Roles value of an operation anyone may call without signing in."""
SIGNED_IN: tuple[str, ...] = ROLES
"""Roles value of an operation any signed-in principal may call."""

MAX_JSON_BODY = 256 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

F = TypeVar("F", bound=Callable[..., Awaitable[None]])


@dataclass(frozen=True)
class Operation:
    """What one HTTP method of one route does, who may call it, and its schemas."""

    summary: str
    roles: tuple[str, ...] | None = PUBLIC
    body: dict[str, Any] | None = None
    query: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    status: int = 200
    errors: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    idempotent: bool = False
    description: str = ""
    content_type: str = "application/json"
    path: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    upload: tuple[str, ...] = ()  # media types of a body that is a file, not JSON


def api(summary: str, *, roles: tuple[str, ...] | None = PUBLIC,
        body: dict[str, Any] | None = None, query: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None, status: int = 200,
        errors: tuple[str, ...] = (), tags: tuple[str, ...] = (), idempotent: bool = False,
        description: str = "", content_type: str = "application/json",
        path: dict[str, Any] | None = None, headers: dict[str, dict[str, Any]] | None = None,
        upload: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Declare an operation: authorize, validate path, body and query, honour
    Idempotency-Key. ``path`` gives a schema to path parameters that are not any string;
    ``headers`` documents request headers the method reads; ``upload`` the media types of a
    file body (read by the method)."""
    for code in errors:
        if code not in ERRORS:
            raise KeyError(f"unknown error code {code!r} in @api({summary!r})")
    op = Operation(summary=summary, roles=roles, body=body, query=query, response=response,
                   status=status, errors=errors, tags=tags, idempotent=idempotent,
                   description=description, content_type=content_type, path=path or {},
                   headers=headers or {}, upload=upload)

    def wrap(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: ApiHandler, *args: Any, **kwargs: Any) -> None:
            self.operation = op
            await self.authorize(op.roles)
            for name, schema in op.path.items():
                validate_path(name, schema, kwargs.get(name))
            if op.query is not None:
                self.query = coerce_query(op.query, self.query_strings())
            if op.body is not None:
                self.body = self.get_json_body(op.body)
            if op.idempotent and "Idempotency-Key" in self.request.headers:
                await self._run_idempotent(method, *args, **kwargs)
            else:
                await method(self, *args, **kwargs)

        wrapper.operation = op  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return wrap


def route(template: str, handler: type[RequestHandler], **kwargs: Any) -> URLSpec:
    """A URLSpec from an OpenAPI-style template: ``/api/v1/orders/{order_no}``."""
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return URLSpec(pattern, handler, {"route": template, **kwargs}, name=template)


class ApiHandler(RequestHandler):
    """JSON in, JSON out; domain errors as ``{"error": {...}}``; metrics and request ids."""

    operation: Operation | None = None
    query: dict[str, Any]
    body: Any

    def initialize(self, route: str = "unmatched", **_: Any) -> None:
        self.route = route
        self.query = {}
        self.body = None
        self._started = time.perf_counter()
        self._payload: Any = None
        self._counted = False
        self._hold_answer = False
        self._held = False

    # --- typed access to what app.py injected ---------------------------------------------
    @property
    def services(self) -> Services:
        return self.application.settings["services"]  # type: ignore[no-any-return]

    @property
    def config(self) -> Settings:
        return self.application.settings["config"]  # type: ignore[no-any-return]

    @property
    def metrics(self) -> Metrics:
        return self.application.settings["metrics"]  # type: ignore[no-any-return]

    @property
    def request_id(self) -> str:
        return request_id_var.get()

    # --- lifecycle --------------------------------------------------------------------------
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    async def prepare(self) -> None:
        incoming = self.request.headers.get("X-Request-Id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else new_request_id()
        request_id_var.set(request_id)
        self.set_header("X-Request-Id", request_id)
        client_ip_var.set(request_client(self))
        self.metrics.serving += 1
        self._counted = True
        self.current_user = await self._principal_from_header()

    async def _principal_from_header(self) -> Principal | None:
        header = self.request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise DomainError("TOKEN_INVALID", "Use Authorization: Bearer <token>.")
        return await self.services.auth.authenticate(token.strip())

    @property
    def principal(self) -> Principal:
        """The signed-in principal (AUTH_REQUIRED if nobody is)."""
        if self.current_user is None:
            raise DomainError("AUTH_REQUIRED")
        return self.current_user  # type: ignore[no-any-return]

    async def authorize(self, roles: tuple[str, ...] | None) -> None:
        """Refuse unless the principal's role is among ``roles`` (PUBLIC: anyone)."""
        if not roles:
            return
        await self.services.authorizer.check(self.principal, roles, self.route,
                                             self.request.method or "-")

    def on_finish(self) -> None:
        if self._counted:  # a request refused before prepare (a 405) was never counted in
            self.metrics.serving -= 1
        self.metrics.observe(self.route, self.request.method or "-", self.get_status(),
                             time.perf_counter() - self._started)

    # --- request bodies ---------------------------------------------------------------------
    def query_strings(self) -> dict[str, list[str]]:
        """The query string as text (invalid UTF-8 replaced, never an exception)."""
        return {k: [v.decode("utf-8", "replace") for v in values]
                for k, values in self.request.query_arguments.items()}

    def get_json_body(self, schema: dict[str, Any] | None = None) -> Any:
        """The parsed JSON body, validated against ``schema``; bad JSON is a 400."""
        raw = self.request.body
        if len(raw) > MAX_JSON_BODY:
            raise DomainError("BODY_TOO_LARGE", limit=MAX_JSON_BODY)
        # Like GitHub's API, the body is read as JSON whatever the declared type (curl -d
        # sends a form type); only a multipart upload is certainly not JSON.
        ctype = self.request.headers.get("Content-Type", "")
        if raw and ctype.lower().startswith("multipart/"):
            raise DomainError("UNSUPPORTED_MEDIA_TYPE")
        if not raw.strip():
            value: Any = None
        else:
            try:
                value = json.loads(raw, parse_float=json_number)
            except (ValueError, UnicodeDecodeError) as exc:
                raise DomainError("MALFORMED_JSON", f"The body is not valid JSON: {exc}.") \
                    from None
        if value is None and schema is not None and schema.get("type") == "object":
            raise DomainError("MALFORMED_JSON", "A JSON object body is required.")
        if schema is not None:
            validate_body(schema, value)
        return value

    # --- responses --------------------------------------------------------------------------
    def attachment(self, name: str, content_type: str, data: bytes) -> None:
        """Answer with a file the browser saves under ``name`` (any script: RFC 6266's
        ``filename*`` carries it in UTF-8, ``filename`` an ASCII fallback)."""
        fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "")
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Disposition", f'attachment; filename="{fallback}"; '
                                               f"filename*=UTF-8''{quote(name)}")
        self.finish(data)

    def write_json(self, payload: Any, status: int | None = None) -> None:
        """Serialize ``payload`` and finish the response (an idempotent operation's answer
        is sent only once it is stored, so a client repeating the call replays it)."""
        status = status or (self.operation.status if self.operation else 200)
        self._payload = payload
        self.set_status(status)
        if self._hold_answer:
            self._held = True
            return
        if status == 204:
            self.finish()
            return
        self.finish(json.dumps(payload, ensure_ascii=False, default=_json_default))

    def write_encoded(self, answer: Encoded) -> None:
        """Finish with an answer encoded beforehand (a kept one) and its entity tag: gzipped
        from its kept gzip form when the client accepts gzip (not compressed again per
        request); a GET whose If-None-Match names its tag is a 304 without the body."""
        self.set_status(self.operation.status if self.operation else 200)
        gzipped = len(answer.body) >= GZipContentEncoding.MIN_LENGTH and \
            bool(self.application.settings.get("compress_response")) and \
            "gzip" in self.request.headers.get("Accept-Encoding", "")
        self.set_header("Etag", answer.gzip_etag if gzipped else answer.etag)
        if self.get_status() == 200 and self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        if gzipped:  # Tornado's own compression leaves an answer with an encoding alone
            self.set_header("Content-Encoding", "gzip")
            self.finish(answer.gzipped())
        else:
            self.finish(answer.body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, DomainError):
            self.set_status(exc.status)
            body = exc.body()
            if exc.status == 429 and "retry_after" in exc.details:
                self.set_header("Retry-After", str(exc.details["retry_after"]))
        elif status_code == 404:
            body = error_body("NOT_FOUND")
        elif status_code == 405:
            body = error_body("METHOD_NOT_ALLOWED")
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        elif status_code < 500:
            reason = getattr(exc, "log_message", None) or httputil.responses.get(status_code)
            body = error_body("INVALID_VALUE", str(reason))
        else:
            self.set_status(500)
            body = error_body("INTERNAL")
        body["error"]["request_id"] = self.request_id
        self.set_header("X-Request-Id", self.request_id)  # send_error cleared the headers
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body, ensure_ascii=False))

    def allowed_methods(self) -> list[str]:
        """The methods this route answers (RFC 9110: a 405 names them in ``Allow``)."""
        return [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
                if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, DomainError):
            log.info("%s %s -> %s", self.request.method, self.route, value.code)
        elif isinstance(value, HTTPError):
            log.info("%s %s -> HTTP %s", self.request.method, self.route, value.status_code)
        else:
            log.error("unexpected error in %s %s", self.request.method, self.route,
                      exc_info=(typ, value, tb))

    # --- idempotency ------------------------------------------------------------------------
    async def _run_idempotent(self, method: Callable[..., Awaitable[None]], *args: Any,
                              **kwargs: Any) -> None:
        key = self.request.headers["Idempotency-Key"].strip()
        if not 1 <= len(key) <= 128:
            raise DomainError("INVALID_VALUE", "Idempotency-Key must be 1-128 characters.",
                              field="Idempotency-Key")
        store = self.services.idempotency
        scope = f"{self.current_user.kind}:{self.current_user.id}" if self.current_user \
            else f"ip:{client_ip_var.get()}"
        fingerprint = store.fingerprint(self.request.method or "", self.request.path,
                                        self.request.body)
        replay = await store.begin(scope, key, fingerprint)
        if replay is not None:
            status, payload = replay
            self.set_header("Idempotent-Replayed", "true")
            self.write_json(payload, status)
            return
        self._hold_answer = True
        try:
            await method(self, *args, **kwargs)
        except BaseException:
            await store.abandon(scope, key)
            raise
        finally:
            self._hold_answer = False
        if self.get_status() < 400:
            await store.complete(scope, key, self.get_status(), self._payload)
        else:
            await store.abandon(scope, key)
        if self._held:
            self.write_json(self._payload, self.get_status())


class PageHandler(RequestHandler):
    """An HTML page: request id and metrics like the API, errors as a short HTML page."""

    def initialize(self, route: str = "page", **_: Any) -> None:
        self.route = route
        self._started = time.perf_counter()

    def prepare(self) -> None:
        request_id = new_request_id()
        request_id_var.set(request_id)
        client_ip_var.set(request_client(self))
        self.set_header("X-Request-Id", request_id)

    def on_finish(self) -> None:
        metrics: Metrics = self.application.settings["metrics"]
        metrics.observe(self.route, self.request.method or "-", self.get_status(),
                        time.perf_counter() - self._started)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(f"<!doctype html><meta charset='utf-8'><title>{status_code}</title>"
                    f"<p>出错了（{status_code}）。请求编号 {request_id_var.get()}</p>")


class NotFoundHandler(ApiHandler):
    """Every unknown route: a JSON 404, whatever the method."""

    async def prepare(self) -> None:
        await super().prepare()
        raise HTTPError(404)


def request_client(handler: RequestHandler) -> str:
    """The client's address: X-Forwarded-For believed only from KEYUN_TRUSTED_PROXIES."""
    return client_address(handler.request.remote_ip or "",
                          handler.request.headers.get("X-Forwarded-For", ""),
                          handler.application.settings["config"].trusted_networks)


def _json_default(value: Any) -> Any:
    isoformat = getattr(value, "isoformat", None)
    if isoformat is not None:
        return isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def log_request(handler: RequestHandler) -> None:
    """Our access log line (Application ``log_function``): one JSON object per request."""
    status = handler.get_status()
    principal = handler.current_user if isinstance(handler.current_user, Principal) else None
    fields = {
        "method": handler.request.method,
        "path": mask_pii(handler.request.path),
        "route": getattr(handler, "route", "static"),
        "status": status,
        "duration_ms": round(1000 * handler.request.request_time(), 2),
        "ip": client_ip_var.get() or handler.request.remote_ip,
    }
    if principal is not None:
        fields["actor"] = f"{principal.role}:{principal.id}"
    level = logging.WARNING if status >= 500 else logging.INFO
    access_log.log(level, "%s %s %s", fields["method"], fields["path"], status,
                   extra={"fields": fields})


def query_time(query: dict[str, Any], name: str) -> Any:
    """An optional RFC 3339 time of the query string (``from``, ``to``), or None."""
    if not query.get(name):
        return None
    return aware_time(query[name], code="INVALID_VALUE", field=name,
                      message=f"{name} is an RFC 3339 time with its offset.")

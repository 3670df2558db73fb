"""Request validation against JSON Schema (2020-12) — the same schemas the OpenAPI document shows.

A schema here is a plain dict. Handlers declare them once (see ``handlers.base.api``); this
module validates bodies and query strings with them and turns the first problem into a
:class:`~server.errors.DomainError` naming the field: MISSING_FIELD, INVALID_TYPE,
UNKNOWN_FIELD, INVALID_VALUE for bodies and INVALID_QUERY for query strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError

from server.clock import parse_day, parse_instant
from server.errors import ERRORS, DomainError


def obj(properties: dict[str, Any], required: Iterable[str] = (), *,
        additional: bool = False, **extra: Any) -> dict[str, Any]:
    """An object schema; unknown fields are refused unless ``additional``."""
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": additional, **extra}
    req = list(required)
    if req:
        schema["required"] = req
    return schema


def string(min_length: int = 0, max_length: int | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **extra}
    if min_length:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


MAX_INTEGER = 2**53 - 1  # what every JSON client can hold exactly, and MongoDB can store


def integer(minimum: int | None = None, maximum: int | None = MAX_INTEGER, **extra: Any
            ) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", **extra}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def json_number(text: str) -> int | float:
    """``parse_float`` of request bodies: a number written ``3.0`` or ``3e2`` is the integer
    it equals (JSON has one number type, and clients write integers either way), so money
    never reaches the database as a float; anything else stays a float."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return float(text)
    if value.is_finite() and value == value.to_integral_value() and abs(value) <= MAX_INTEGER:
        return int(value)
    return float(text)


def array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


DIVISION = string(pattern="^[1-9][0-9]{5}$", description="GB/T 2260 admin division code")
FEN = integer(0, 10**12, description="money in integer fen (分)")
PHONE = string(11, 14, pattern=r"^(\+86)?1[3-9][0-9]{9}$",
               description="mainland mobile number, optionally +86",
               **{"x-error-code": "INVALID_PHONE"})
DAY = string(10, 10, format="date", description="YYYY-MM-DD")
DATETIME = string(format="date-time", description="ISO 8601 with offset")


def _strict_integer(_checker: Any, instance: Any) -> bool:
    # JSON Schema counts 1.0 as an integer; money and counts are integers, never floats
    return isinstance(instance, int) and not isinstance(instance, bool)


_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date")
def _is_day(instance: object) -> bool:
    """YYYY-MM-DD, a real day (what ``server.errors.calendar_day`` takes)."""
    return not isinstance(instance, str) or parse_day(instance) is not None


@_FORMATS.checks("date-time")
def _is_instant(instance: object) -> bool:
    """RFC 3339 with its offset (what ``server.errors.aware_time`` takes)."""
    return not isinstance(instance, str) or parse_instant(instance) is not None



StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer))

_validators: dict[int, Any] = {}


def validator(schema: dict[str, Any]) -> Any:
    """A compiled validator per schema object (schemas are module constants, never freed):
    integers are integers (not 1.0), ``date`` and ``date-time`` formats are checked."""
    found = _validators.get(id(schema))
    if found is None:
        Draft202012Validator.check_schema(schema)
        found = _validators[id(schema)] = StrictValidator(schema, format_checker=_FORMATS)
    return found


def field_path(path: Iterable[Any]) -> str:
    """``passengers[0].id_no`` from a jsonschema path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: ValidationError) -> tuple[str, str, str]:
    """(code, field, message) for the most useful validation error."""
    base = field_path(error.absolute_path)
    kind = error.validator
    if kind == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = next((n for n in error.validator_value if n not in present), "")
        field = f"{base}.{missing}" if base else missing
        return "MISSING_FIELD", field, f"Field '{field}' is required."
    if kind == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        name = extra[0] if extra else ""
        field = f"{base}.{name}" if base else name
        return "UNKNOWN_FIELD", field, f"Field '{field}' is not accepted here."
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        where = f"Field '{base}'" if base else "The body"
        return "INVALID_TYPE", base, f"{where} must be of type {expected}."
    where = f"Field '{base}'" if base else "The body"
    code = error.schema.get("x-error-code") if isinstance(error.schema, dict) else None
    if code:  # a pattern with a code of its own (e.g. INVALID_PHONE)
        return code, base, f"{where}: {ERRORS[code][1]}"
    return "INVALID_VALUE", base, f"{where}: {error.message}"


def validate_body(schema: dict[str, Any], value: Any) -> None:
    """Raise the DomainError for the first problem of ``value`` against ``schema``."""
    errors = list(validator(schema).iter_errors(value))
    if not errors:
        return
    # report the shallowest problem first, and "required" before anything else at that depth
    errors.sort(key=lambda e: (len(e.absolute_path), e.validator != "required",
                               e.validator != "type"))
    code, field, message = _describe(errors[0])
    raise DomainError(code, message, field=field)


def validate_path(name: str, schema: dict[str, Any], value: Any) -> None:
    """A path parameter against its schema (INVALID_VALUE naming it)."""
    errors = list(validator(schema).iter_errors(value))
    if errors:
        raise DomainError("INVALID_VALUE", f"Path parameter '{name}': {errors[0].message}",
                          field=name)


_VALID_QUERIES: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = {}
VALID_QUERIES_KEPT = 10_000


def coerce_query(schema: dict[str, Any], raw: dict[str, list[str]]) -> dict[str, Any]:
    """Turn query-string values into the schema's types and validate (INVALID_QUERY).

    The same query string is asked again and again (every passenger searching 广州→深圳
    tomorrow): valid ones are remembered, so validation runs once per distinct query."""
    props: dict[str, Any] = schema.get("properties", {})
    key = (id(schema), *((k, *v) for k, v in raw.items() if k in props))
    known = _VALID_QUERIES.get(key)
    if known is not None and known[0] is schema:
        return {k: list(v) if isinstance(v, list) else v for k, v in known[1].items()}
    out = _coerce_query(schema, props, raw)
    if len(_VALID_QUERIES) >= VALID_QUERIES_KEPT:
        _VALID_QUERIES.clear()
    _VALID_QUERIES[key] = (schema, {k: list(v) if isinstance(v, list) else v
                                    for k, v in out.items()})
    return out


def _coerce_query(schema: dict[str, Any], props: dict[str, Any], raw: dict[str, list[str]]
                  ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in raw.items():
        prop = props.get(name)
        if prop is None:
            continue  # unknown query parameters are ignored, as browsers and caches add some
        kind = prop.get("type", "string")
        try:
            if kind == "array":
                item_kind = prop.get("items", {}).get("type", "string")
                out[name] = [_coerce(item_kind, v) for v in values]
            else:
                out[name] = _coerce(kind, values[-1])
        except ValueError:
            raise DomainError("INVALID_QUERY", f"Query parameter '{name}' must be {kind}.",
                              field=name) from None
    errors = sorted(validator(schema).iter_errors(out),
                    key=lambda e: (len(e.absolute_path), e.validator != "required"))
    if errors:
        _code, field, message = _describe(errors[0])
        message = message.replace("Field '", "Query parameter '")
        raise DomainError("INVALID_QUERY", message, field=field)
    return out


def _coerce(kind: str, value: str) -> Any:
    if kind == "integer":
        return int(value, 10)
    if kind == "number":
        return float(value)
    if kind == "boolean":
        lowered = value.lower()
        if lowered in {"true", "1"}:
            return True
        if lowered in {"false", "0"}:
            return False
        raise ValueError(value)
    return value

"""Request validation against JSON Schema (2020-12) — the same schemas the OpenAPI document shows.

A schema here is a plain dict. Handlers declare them once (see ``handlers.base.api``); this
module validates bodies and query strings with them and turns the first problem into a
:class:`~server.errors.DomainError` naming the field: MISSING_FIELD, INVALID_TYPE,
UNKNOWN_FIELD, INVALID_VALUE for bodies and INVALID_QUERY for query strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from server.errors import DomainError


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


def integer(minimum: int | None = None, maximum: int | None = None, **extra: Any
            ) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", **extra}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


DIVISION = string(pattern="^[1-9][0-9]{5}$", description="GB/T 2260 admin division code")
FEN = integer(0, description="money in integer fen (分)")
DATETIME = string(format="date-time", description="ISO 8601 with offset")


_validators: dict[int, Draft202012Validator] = {}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A compiled validator per schema object (schemas are module constants, never freed)."""
    found = _validators.get(id(schema))
    if found is None:
        Draft202012Validator.check_schema(schema)
        found = _validators[id(schema)] = Draft202012Validator(schema)
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


def coerce_query(schema: dict[str, Any], raw: dict[str, list[str]]) -> dict[str, Any]:
    """Turn query-string values into the schema's types and validate (INVALID_QUERY)."""
    props: dict[str, Any] = schema.get("properties", {})
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

"""Schemathesis hooks for the bounded run in ``tests/test_schemathesis.py``.

Each operation is called with the token of a role it declares (``x-roles`` in the OpenAPI
document; tokens from ``KEYUN_ST_TOKENS``), so every operation is reached by someone allowed
to call it. Operations that would end the run's own sign-ins are left out.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis

TOKENS: dict[str, str] = json.loads(os.environ.get("KEYUN_ST_TOKENS", "{}"))
DEFAULT = os.environ.get("KEYUN_ST_TOKEN", "")  # what the config's bearer auth sends
ADDRESS = os.environ.get("KEYUN_ST_ADDRESS", "198.51.100.200")
# a staff account of its own for PATCH /admin/staff/{id}: changing the accounts whose
# tokens the run uses would end their sign-ins halfway
STAFF_VICTIM = os.environ.get("KEYUN_ST_STAFF", "")


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    raw = getattr(case.operation.definition, "raw", {}) or {}
    roles = raw.get("x-roles") or []
    headers = dict(case.headers or {})
    headers["X-Forwarded-For"] = ADDRESS
    # only the configured token is swapped: the auth checks send missing or forged ones
    if roles and headers.get("Authorization") == f"Bearer {DEFAULT}":
        role = next((r for r in roles if r in TOKENS), None)
        if role:
            headers["Authorization"] = f"Bearer {TOKENS[role]}"
    case.headers = headers
    if STAFF_VICTIM and case.path_parameters and "staff_id" in case.path_parameters:
        case.path_parameters = {**case.path_parameters, "staff_id": STAFF_VICTIM}

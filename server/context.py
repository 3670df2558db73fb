"""Per-request context carried by context variables: request id and client address.

The API edge sets them when a request starts; logs, audit entries and services read them, so
nobody threads them through every call.
"""

from __future__ import annotations

import contextvars

from server.logs import request_id_var

client_ip_var: contextvars.ContextVar[str] = contextvars.ContextVar("client_ip", default="")

__all__ = ["client_ip_var", "request_id_var"]

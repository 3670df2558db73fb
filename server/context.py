"""Per-request context carried by context variables: request id and client address.

The API edge sets them when a request starts; logs, audit entries and services read them, so
nobody threads them through every call.
"""

from __future__ import annotations

import contextvars
import itertools
import os

from server.logs import request_id_var

client_ip_var: contextvars.ContextVar[str] = contextvars.ContextVar("client_ip", default="")


class _RequestIds:
    """32 hex digits: 16 drawn at random when the process starts (again in a forked child),
    then a counter — unique across processes and restarts like a uuid4, without reading the
    kernel's random source for every request."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count(int.from_bytes(os.urandom(4)))

    def next(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFFFFFFFFFFFFFF:016x}"


new_request_id = _RequestIds().next

__all__ = ["client_ip_var", "new_request_id", "request_id_var"]

"""Sealed values: what the platform hands out and later takes back as proof of itself — a
payment link, a refund quote. HMAC-SHA256 under a key derived from the token secret, one key
per purpose, so a seal made for one use is never accepted for another (nor as a token)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


class Seal:
    def __init__(self, secret: str, purpose: str) -> None:
        self._key = hmac.new(secret.encode(), f"keyun {purpose}".encode(),
                             hashlib.sha256).digest()

    def sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def matches(self, text: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(text), signature)

    def wrap(self, fields: dict[str, Any]) -> str:
        """Fields → ``<base64url JSON>.<signature>``: readable by anyone, made only by us."""
        body = base64.urlsafe_b64encode(json.dumps(
            fields, separators=(",", ":"), sort_keys=True).encode()).decode().rstrip("=")
        return f"{body}.{self.sign(body)}"

    def unwrap(self, sealed: str) -> dict[str, Any] | None:
        """The fields of a value this seal made; None if it was forged or altered."""
        body, _, signature = sealed.rpartition(".")
        if not body or not self.matches(body, signature):
            return None
        try:
            fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        return fields if isinstance(fields, dict) else None

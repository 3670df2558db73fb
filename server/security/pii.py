"""Personal data at rest: ID numbers and phones encrypted (AES-256-GCM), found by blind index.

- Encryption: AES-GCM with a 96-bit random nonce; the stored form is
  ``v1.<key id>.<base64url(nonce | ciphertext+tag)>``, and the field name is bound as
  associated data, so a ciphertext moved to another field does not decrypt. Keys are
  rotatable: new values use the current key; old values decrypt with the key named in them.
- Blind index: HMAC-SHA256 of the normalized value under a separate key, so equality look-ups
  (one person one seat, a member by phone) need no decryption and reveal nothing by themselves.
- Masks: what every response and log line shows instead (``4401**********1234``,
  ``138****5678``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class PiiKeyError(ValueError):
    """A key is missing or malformed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_keys(spec: str) -> dict[str, bytes]:
    """``kid:base64key,kid2:base64key`` → {kid: 32-byte key}; the first is current."""
    keys: dict[str, bytes] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        kid, _, encoded = part.partition(":")
        if not kid.isalnum() or not encoded:
            raise PiiKeyError(f"key entry {kid!r} must look like kid:base64key")
        try:
            key = _unb64(encoded)
        except ValueError:
            raise PiiKeyError(f"key {kid!r} is not base64") from None
        if len(key) != 32:
            raise PiiKeyError(f"key {kid!r} must be 32 bytes (AES-256), got {len(key)}")
        keys[kid] = key
    if not keys:
        raise PiiKeyError("no keys")
    return keys


def new_key_spec(kid: str = "k1") -> str:
    return f"{kid}:{_b64(os.urandom(32))}"


@dataclass
class PiiVault:
    """Encrypts, decrypts, indexes and masks personal fields."""

    keys: dict[str, bytes]  # first = current
    index_key: bytes

    @classmethod
    def from_config(cls, key_spec: str, index_key: str) -> PiiVault:
        raw_index = _unb64(index_key) if index_key else b""
        if len(raw_index) < 32:
            raise PiiKeyError("the blind-index key must be at least 32 bytes (base64)")
        return cls(parse_keys(key_spec), raw_index)

    @property
    def current(self) -> str:
        return next(iter(self.keys))

    def encrypt(self, field: str, value: str) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self.keys[self.current]).encrypt(nonce, value.encode(), field.encode())
        return f"v1.{self.current}.{_b64(nonce + sealed)}"

    def decrypt(self, field: str, stored: str) -> str:
        try:
            version, kid, payload = stored.split(".", 2)
            if version != "v1":
                raise ValueError(version)
            raw = _unb64(payload)
            return AESGCM(self.keys[kid]).decrypt(raw[:12], raw[12:], field.encode()).decode()
        except (ValueError, KeyError, InvalidTag) as exc:
            raise PiiKeyError(f"cannot decrypt {field}: {type(exc).__name__}") from None

    def needs_rotation(self, stored: str) -> bool:
        """Whether a stored value was sealed with an old key (re-encrypt it)."""
        return stored.split(".", 2)[1] != self.current

    def index(self, kind: str, value: str) -> str:
        """Blind index of a normalized value, namespaced by kind (phone, id:resident_id…)."""
        digest = hmac.new(self.index_key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return digest.hexdigest()


def mask_id(value: str) -> str:
    """``440106199001011234`` → ``4401**********1234``; short documents keep less."""
    if len(value) >= 15:
        return value[:4] + "*" * (len(value) - 8) + value[-4:]
    if len(value) > 4:
        return value[:1] + "*" * (len(value) - 3) + value[-2:]
    return "*" * len(value)


def mask_phone(value: str) -> str:
    """``13812345678`` → ``138****5678``."""
    if len(value) == 11:
        return value[:3] + "****" + value[-4:]
    return mask_id(value)


def mask_name(value: str) -> str:
    """``张三丰`` → ``张*丰``, ``张三`` → ``张*`` (for manifests and staff lists)."""
    if len(value) <= 1:
        return value
    if len(value) == 2:
        return value[0] + "*"
    return value[0] + "*" * (len(value) - 2) + value[-1]

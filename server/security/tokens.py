"""Access tokens (JWT, HS256, short-lived) and opaque refresh tokens (stored only as hashes)."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any

import jwt

from server.errors import DomainError
from server.security.principal import Principal

ISSUER = "keyun"
AUDIENCE = "keyun-api"
ALGORITHM = "HS256"


class AccessTokens:
    """Issues and verifies access tokens with one HMAC secret."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl = ttl_seconds

    def issue(self, principal: Principal, now: float | None = None) -> tuple[str, int]:
        """A signed access token for the principal and its expiry (Unix seconds)."""
        now = int(now if now is not None else time.time())
        exp = now + self.ttl
        claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now,
                                  "exp": exp, "jti": uuid.uuid4().hex, **principal.claims()}
        claims["sub"] = claims.pop("id")
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), exp

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; TOKEN_EXPIRED or TOKEN_INVALID otherwise."""
        return self.decode(token)[0]

    def decode(self, token: str) -> tuple[Principal, int]:
        """The principal of a valid token and when it was issued (Unix seconds)."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], audience=AUDIENCE,
                                issuer=ISSUER, leeway=5,
                                options={"require": ["exp", "iat", "sub", "aud", "iss"]})
            return Principal.from_claims(claims), int(claims["iat"])
        except jwt.ExpiredSignatureError:
            raise DomainError("TOKEN_EXPIRED") from None
        except (jwt.InvalidTokenError, KeyError, ValueError, TypeError):
            raise DomainError("TOKEN_INVALID") from None


def new_refresh_token() -> str:
    """A fresh opaque refresh token (256 bits, URL-safe)."""
    return "rt_" + secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """What is stored instead of the token: a leaked table cannot be replayed."""
    return hashlib.sha256(token.encode()).hexdigest()

"""Staff password hashing with argon2id, off the IOLoop (hashing is deliberately slow)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# verified against when the username does not exist, so both paths cost the same time
_DUMMY_HASH = _hasher.hash("keyun-no-such-user")


async def hash_password(password: str) -> str:
    """Hash a password (argon2id) in the default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, _hasher.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """Check a password against a stored hash; a missing user costs the same time."""
    return await asyncio.get_running_loop().run_in_executor(None, _verify, stored, password)

"""Sign-in for staff, refresh-token rotation with reuse detection, sign-out, staff accounts.

Refresh tokens form a *family* per sign-in. Each refresh marks the presented token used and
issues the next one of the family; presenting a used token again means it was stolen (or
replayed), so the whole family is revoked and everyone holding it must sign in again.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from server.context import client_ip_var
from server.errors import DomainError
from server.security.passwords import hash_password, verify_password
from server.security.principal import ROLE_SCOPE, STAFF_ROLES, Principal
from server.security.tokens import AccessTokens, hash_refresh_token, new_refresh_token
from server.services.audit import AuditService

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AuthService:
    """Tokens for staff and members; staff accounts."""

    def __init__(self, db: AsyncDatabase[Any], redis: Redis, access: AccessTokens,
                 audit: AuditService, *, refresh_ttl: int, max_failures: int,
                 lockout_seconds: int) -> None:
        self._db = db
        self._redis = redis
        self.access = access
        self._audit = audit
        self._refresh_ttl = refresh_ttl
        self._max_failures = max_failures
        self._lockout = lockout_seconds

    # --- tokens ---------------------------------------------------------------------------
    async def issue_tokens(self, principal: Principal, family: str | None = None
                           ) -> dict[str, Any]:
        """A new access token and the next refresh token of ``family`` (new family if None)."""
        token, exp = self.access.issue(principal)
        refresh = new_refresh_token()
        now = _now()
        await self._db.refresh_tokens.insert_one({
            "token_hash": hash_refresh_token(refresh),
            "family": family or uuid.uuid4().hex,
            "subject": principal.claims(),
            "created_at": now,
            "expires_at": now + dt.timedelta(seconds=self._refresh_ttl),
            "used_at": None,
            "revoked_at": None,
        })
        return {"token": token, "token_type": "Bearer", "expires_in": self.access.ttl,
                "expires_at": dt.datetime.fromtimestamp(exp, dt.UTC).isoformat(),
                "refresh_token": refresh}

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Rotate: mark the token used and issue the next; a reused token revokes its family."""
        token_hash = hash_refresh_token(refresh_token)
        now = _now()
        # Atomic: of two concurrent refreshes with one token exactly one gets it unused.
        doc = await self._db.refresh_tokens.find_one_and_update(
            {"token_hash": token_hash, "used_at": None, "revoked_at": None},
            {"$set": {"used_at": now}}, return_document=ReturnDocument.BEFORE)
        if doc is None:
            seen = await self._db.refresh_tokens.find_one({"token_hash": token_hash})
            if seen is None:
                raise DomainError("REFRESH_TOKEN_INVALID")
            if seen.get("used_at") is not None and seen.get("revoked_at") is None:
                await self._revoke_family(seen["family"], now)
                principal = Principal.from_claims({**seen["subject"],
                                                   "sub": seen["subject"]["id"]})
                if principal.is_staff:
                    await self._audit.record(principal, "auth.refresh_reuse", outcome="denied",
                                             details={"family": seen["family"]})
                log.warning("refresh token reuse; family revoked",
                            extra={"fields": {"family": seen["family"]}})
                raise DomainError("REFRESH_TOKEN_REUSED")
            raise DomainError("REFRESH_TOKEN_INVALID")
        if doc["expires_at"].replace(tzinfo=dt.UTC) <= now:
            raise DomainError("REFRESH_TOKEN_EXPIRED")
        principal = Principal.from_claims({**doc["subject"], "sub": doc["subject"]["id"]})
        if principal.is_staff:
            await self._ensure_staff_active(principal.id)
        return await self.issue_tokens(principal, family=doc["family"])

    async def logout(self, refresh_token: str, principal: Principal | None) -> None:
        """Revoke the sign-in (the whole family) that this refresh token belongs to."""
        doc = await self._db.refresh_tokens.find_one(
            {"token_hash": hash_refresh_token(refresh_token)})
        if doc is None:
            raise DomainError("REFRESH_TOKEN_INVALID")
        if principal is not None and doc["subject"].get("id") != principal.id:
            raise DomainError("REFRESH_TOKEN_INVALID")
        await self._revoke_family(doc["family"], _now())
        if principal is not None and principal.is_staff:
            await self._audit.record(principal, "auth.logout")

    async def _revoke_family(self, family: str, now: dt.datetime) -> None:
        await self._db.refresh_tokens.update_many(
            {"family": family, "revoked_at": None}, {"$set": {"revoked_at": now}})

    # --- staff sign-in ----------------------------------------------------------------------
    async def staff_login(self, username: str, password: str) -> dict[str, Any]:
        """Check the password (argon2), rate-limit failures per user and address, audit."""
        username = username.strip().lower()
        ip = client_ip_var.get() or "-"
        fail_key = f"login:fail:{{{username}}}:{ip}"
        user_key = f"login:fail:{{{username}}}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(fail_key)
        pipe.get(user_key)
        per_ip, per_user = await pipe.execute()
        if int(per_ip or 0) >= self._max_failures or \
                int(per_user or 0) >= self._max_failures * 4:
            await self._audit.record({"kind": "anonymous", "username": username},
                                     "auth.staff_login", outcome="denied",
                                     details={"reason": "locked_out"})
            raise DomainError("TOO_MANY_ATTEMPTS", retry_after=self._lockout)

        staff = await self._db.staff.find_one({"username": username})
        ok = await verify_password(staff["password_hash"] if staff else None, password)
        if not ok:
            pipe = self._redis.pipeline(transaction=True)
            for key in (fail_key, user_key):
                pipe.incr(key)
                pipe.expire(key, self._lockout)
            await pipe.execute()
            await self._audit.record({"kind": "anonymous", "username": username},
                                     "auth.staff_login", outcome="denied",
                                     details={"reason": "bad_credentials"})
            raise DomainError("INVALID_CREDENTIALS")
        assert staff is not None
        principal = staff_principal(staff)
        if staff.get("status") != "active":
            await self._audit.record(principal, "auth.staff_login", outcome="denied",
                                     details={"reason": "disabled"})
            raise DomainError("ACCOUNT_DISABLED")
        await self._redis.delete(fail_key)
        tokens = await self.issue_tokens(principal)
        await self._audit.record(principal, "auth.staff_login")
        return {**tokens, "staff": public_staff(staff)}

    async def _ensure_staff_active(self, staff_id: str) -> None:
        staff = await self._db.staff.find_one({"_id": staff_id}, {"status": 1})
        if staff is None or staff.get("status") != "active":
            raise DomainError("ACCOUNT_DISABLED")

    # --- staff accounts ---------------------------------------------------------------------
    async def create_staff(self, actor: Principal, *, username: str, password: str, role: str,
                           name: str = "", region: str | None = None,
                           station_id: str | None = None, outlet_id: str | None = None
                           ) -> dict[str, Any]:
        """Create a staff account; its role's scope must be given (and must exist)."""
        if role not in STAFF_ROLES:
            raise DomainError("INVALID_VALUE", f"Unknown staff role {role!r}.", field="role")
        scope = {"region": region, "station_id": station_id, "outlet_id": outlet_id}
        needed = ROLE_SCOPE.get(role)
        if needed and not scope[needed]:
            raise DomainError("SCOPE_REQUIRED", f"Role {role} needs {needed}.", field=needed)
        if station_id and await self._db.stations.count_documents({"_id": station_id},
                                                                   limit=1) == 0:
            raise DomainError("STATION_NOT_FOUND", field="station_id")
        doc: dict[str, Any] = {
            "_id": "stf_" + uuid.uuid4().hex[:16],
            "username": username.strip().lower(),
            "password_hash": await hash_password(password),
            "name": name,
            "role": role,
            "status": "active",
            "created_at": _now(),
            **{k: v for k, v in scope.items() if v},
        }
        try:
            await self._db.staff.insert_one(doc)
        except DuplicateKeyError:
            raise DomainError("USERNAME_TAKEN", field="username") from None
        await self._audit.record(actor, "staff.create", target=doc["_id"],
                                 details={"username": doc["username"], "role": role})
        return public_staff(doc)

    async def list_staff(self, role: str | None = None) -> list[dict[str, Any]]:
        query = {"role": role} if role else {}
        return [public_staff(d) async for d in self._db.staff.find(query).sort("username", 1)]


def staff_principal(staff: dict[str, Any]) -> Principal:
    return Principal(kind="staff", id=str(staff["_id"]), role=staff["role"],
                     username=staff["username"], region=staff.get("region"),
                     station_id=staff.get("station_id"), outlet_id=staff.get("outlet_id"))


def public_staff(staff: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a staff account (never the hash)."""
    out = {"id": str(staff["_id"]), "username": staff["username"], "name": staff.get("name", ""),
           "role": staff["role"], "status": staff["status"]}
    for key in ("region", "station_id", "outlet_id"):
        if staff.get(key):
            out[key] = staff[key]
    return out

"""Sign-in for staff, refresh-token rotation with reuse detection, sign-out, staff accounts.

Refresh tokens form a *family* per sign-in. Each refresh marks the presented token used and
issues the next one of the family; presenting a used token again means it was stolen (or
replayed), so the whole family is revoked and everyone holding it must sign in again.

A refresh reads the account again: a staff token carries the account's current role and
scope, and a disabled (or, for a member, closed) account gets none. When an operator disables
a staff account or changes its role or scope, or a member closes their account, the moment is
noted in Redis (``auth:changed:<id>``); access tokens of that account issued before it are
refused (``TOKEN_REVOKED``) — each process looks the note up at most every
``REVOCATION_CACHE_SECONDS``, so within a minute everywhere.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from server.context import client_ip_var
from server.errors import DomainError
from server.paging import Page, find_page
from server.security.passwords import hash_password, verify_password
from server.security.principal import ROLE_SCOPE, STAFF_ROLES, Principal
from server.security.tokens import AccessTokens, hash_refresh_token, new_refresh_token
from server.services.audit import AuditService
from server.storage.attempts import Backoff, WindowLimit

log = logging.getLogger(__name__)

REVOCATION_CACHE_SECONDS = 15.0
SCOPE_FIELDS = ("region", "station_id", "outlet_id")


def _changed_key(subject_id: str) -> str:
    """When the account last changed in a way that ends its sign-ins (Unix seconds)."""
    return f"auth:changed:{subject_id}"


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
        self._failures = WindowLimit(redis, "login", max_failures, lockout_seconds)
        # an address may fail a few times freely, then waits longer after each failure
        self._slow = Backoff(redis, "login-ip", free=max_failures * 2,
                             cap=lockout_seconds, memory=lockout_seconds)
        self._changed: dict[str, tuple[float, int]] = {}  # subject -> (looked at, changed)

    # --- who is calling ---------------------------------------------------------------------
    async def authenticate(self, token: str) -> Principal:
        """The principal of an access token that is valid and still current: a token issued
        before its account was disabled, re-scoped or closed is TOKEN_REVOKED."""
        principal, issued_at = self.access.decode(token)
        if issued_at <= await self._changed_at(principal.id):
            raise DomainError("TOKEN_REVOKED")
        return principal

    async def _changed_at(self, subject_id: str) -> int:
        now = time.monotonic()
        cached = self._changed.get(subject_id)
        if cached is not None and now - cached[0] < REVOCATION_CACHE_SECONDS:
            return cached[1]
        value = int(await self._redis.get(_changed_key(subject_id)) or 0)
        if len(self._changed) > 10_000:
            self._changed.clear()
        self._changed[subject_id] = (now, value)
        return value

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
        if principal.is_staff:  # the account as it is now, not as it was at sign-in
            staff = await self._db.staff.find_one({"_id": principal.id})
            if staff is None or staff.get("status") != "active":
                await self._revoke_family(doc["family"], now)
                raise DomainError("ACCOUNT_DISABLED")
            principal = staff_principal(staff)
        elif principal.kind == "member":
            member = await self._db.members.find_one({"_id": principal.id}, {"status": 1})
            if member is None or member.get("status") != "active":
                await self._revoke_family(doc["family"], now)
                raise DomainError("ACCOUNT_DISABLED")
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

    async def end_sign_ins(self, subject_id: str) -> None:
        """Every sign-in of an account ends now: its access tokens are refused from the next
        request (within REVOCATION_CACHE_SECONDS on other processes), its refresh tokens
        revoked."""
        await self._redis.set(_changed_key(subject_id), int(time.time()),
                              ex=self.access.ttl + 120)
        self._changed.pop(subject_id, None)
        await self._db.refresh_tokens.update_many(
            {"subject.id": subject_id, "revoked_at": None}, {"$set": {"revoked_at": _now()}})

    # --- staff sign-in ----------------------------------------------------------------------
    async def staff_login(self, username: str, password: str) -> dict[str, Any]:
        """Check the password (argon2), audit. Failures lock a username out only from the
        address they came from (a stranger elsewhere cannot lock ``gate`` out of its
        station), and an address that keeps failing — whatever the usernames — waits
        2, 4, 8 … seconds between tries."""
        username = username.strip().lower()
        ip = client_ip_var.get() or "-"
        wait = max(await self._failures.blocked(f"{username}|{ip}"),
                   await self._slow.wait(ip))
        if wait:
            await self._audit.record({"kind": "anonymous", "username": username},
                                     "auth.staff_login", outcome="denied",
                                     details={"reason": "locked_out"})
            raise DomainError("TOO_MANY_ATTEMPTS", retry_after=wait)

        staff = await self._db.staff.find_one({"username": username})
        ok = await verify_password(staff["password_hash"] if staff else None, password)
        if not ok:
            await self._failures.count(f"{username}|{ip}")
            await self._slow.fail(ip)
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
        await self._failures.clear(f"{username}|{ip}")
        tokens = await self.issue_tokens(principal)
        await self._audit.record(principal, "auth.staff_login")
        return {**tokens, "staff": public_staff(staff)}

    # --- staff accounts ---------------------------------------------------------------------
    async def create_staff(self, actor: Principal, *, username: str, password: str, role: str,
                           name: str = "", region: str | None = None,
                           station_id: str | None = None, outlet_id: str | None = None
                           ) -> dict[str, Any]:
        """Create a staff account; its role's scope must be given (and must exist)."""
        if role not in STAFF_ROLES:
            raise DomainError("INVALID_VALUE", f"Unknown staff role {role!r}.", field="role")
        scope = {"region": region, "station_id": station_id, "outlet_id": outlet_id}
        await self._check_scope(role, scope, station_id)
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

    async def update_staff(self, actor: Principal, staff_id: str, changes: dict[str, Any]
                           ) -> dict[str, Any]:
        """Disable, enable, re-role or re-scope a staff account. Its sign-ins end: refresh
        tokens are revoked and access tokens issued before now are refused."""
        staff = await self._db.staff.find_one({"_id": staff_id})
        if staff is None:
            raise DomainError("NOT_FOUND", "No such staff account.")
        ends_sign_ins = any(k in changes for k in ("status", "role", *SCOPE_FIELDS))
        if staff_id == actor.id and ends_sign_ins:
            raise DomainError("CANNOT_CHANGE_OWN_ACCOUNT")
        updated = {**staff, **changes}
        needed = await self._check_scope(updated["role"], updated, changes.get("station_id"))
        unset = {k: "" for k in SCOPE_FIELDS if k != needed and updated.get(k)
                 and k not in changes}  # a new role keeps only the scope it needs
        update: dict[str, Any] = {"$set": {**changes, "updated_at": _now()}}
        if unset:
            update["$unset"] = unset
        doc = await self._db.staff.find_one_and_update({"_id": staff_id}, update,
                                                       return_document=ReturnDocument.AFTER)
        if ends_sign_ins:
            await self.end_sign_ins(staff_id)
        await self._audit.record(actor, "staff.update", target=staff_id,
                                 details={"changes": sorted(changes)})
        return public_staff(doc)

    async def _check_scope(self, role: str, scope: dict[str, Any], new_station: str | None
                           ) -> str | None:
        """The scope field the role needs (SCOPE_REQUIRED if missing); a station named
        anew must exist. Returns the field's name (None for unscoped roles)."""
        needed = ROLE_SCOPE.get(role)
        if needed and not scope.get(needed):
            raise DomainError("SCOPE_REQUIRED", f"Role {role} needs {needed}.", field=needed)
        if new_station and await self._db.stations.count_documents({"_id": new_station},
                                                                   limit=1) == 0:
            raise DomainError("STATION_NOT_FOUND", field="station_id")
        return needed

    async def list_staff(self, role: str | None = None, q: str | None = None,
                         page: Page | None = None) -> tuple[list[dict[str, Any]], int]:
        """A page of staff accounts by username (``q``: a part of the username), and how
        many match."""
        query: dict[str, Any] = {"role": role} if role else {}
        if q:
            query["username"] = {"$regex": re.escape(q)}
        docs, total = await find_page(self._db.staff, query, [("username", 1)],
                                      page or Page(0, 500))
        return [public_staff(d) for d in docs], total


def staff_principal(staff: dict[str, Any]) -> Principal:
    return Principal(kind="staff", id=str(staff["_id"]), role=staff["role"],
                     username=staff["username"], region=staff.get("region"),
                     station_id=staff.get("station_id"), outlet_id=staff.get("outlet_id"))


def public_staff(staff: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a staff account (never the hash)."""
    out = {"id": str(staff["_id"]), "username": staff["username"], "name": staff.get("name", ""),
           "role": staff["role"], "status": staff["status"]}
    for key in SCOPE_FIELDS:
        if staff.get(key):
            out[key] = staff[key]
    return out

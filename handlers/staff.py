"""Staff accounts and the audit trail, for the operator."""

from __future__ import annotations

import datetime as dt

from handlers.auth import STAFF
from handlers.base import ApiHandler, api, route
from server.errors import aware_time
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DATETIME, DIVISION, array, integer, obj, string
from server.security.principal import OPERATOR, STAFF_ROLES

CREATE_STAFF = obj({"username": string(3, 32, pattern="^[a-z][a-z0-9_.-]{2,31}$"),
                    "password": string(10, 256), "role": string(enum=list(STAFF_ROLES)),
                    "name": string(0, 64), "region": DIVISION, "station_id": string(1, 64),
                    "outlet_id": string(1, 64)}, ["username", "password", "role"])
STAFF_LIST = obj({"staff": array(STAFF), "total": TOTAL}, ["staff", "total"])
UPDATE_STAFF = obj({"status": string(enum=["active", "disabled"]),
                    "role": string(enum=list(STAFF_ROLES)), "name": string(0, 64),
                    "region": DIVISION, "station_id": string(1, 64),
                    "outlet_id": string(1, 64)}, minProperties=1)
STAFF_QUERY = obj({"role": string(enum=list(STAFF_ROLES)),
                   "q": string(1, 64, description="a part of the username"), **PAGE_QUERY},
                  additional=True)
AUDIT_ENTRY = obj({"at": DATETIME, "action": string(), "outcome": string(),
                   "actor": {"type": "object"}, "target": string(), "request_id": string(),
                   "ip": string(), "details": {"type": "object"}}, ["at", "action", "actor"],
                  additional=True)
AUDIT_LIST = obj({"entries": array(AUDIT_ENTRY)}, ["entries"])
AUDIT_QUERY = obj({"action": string(1, 64), "actor": string(1, 64), "limit": integer(1, 500),
                   "before": string(format="date-time")}, additional=True)


class StaffHandler(ApiHandler):
    @api("Staff accounts", roles=(OPERATOR,), query=STAFF_QUERY, response=STAFF_LIST,
         tags=("admin",))
    async def get(self) -> None:
        rows, total = await self.services.auth.list_staff(
            self.query.get("role"), self.query.get("q"), Page.of(self.query, 100))
        self.write_json({"staff": rows, "total": total})

    @api("Create a staff account (role-scoped: region, station or outlet)", roles=(OPERATOR,),
         body=CREATE_STAFF, response=STAFF, status=201, tags=("admin",), idempotent=True,
         errors=("USERNAME_TAKEN", "SCOPE_REQUIRED", "STATION_NOT_FOUND"))
    async def post(self) -> None:
        staff = await self.services.auth.create_staff(self.principal, **self.body)
        self.write_json(staff, 201)


class StaffMemberHandler(ApiHandler):
    @api("Disable, enable, re-role or re-scope a staff account; its sign-ins end at once "
         "(access tokens issued before are refused within a minute)", roles=(OPERATOR,),
         body=UPDATE_STAFF, response=STAFF, tags=("admin",), idempotent=True,
         errors=("NOT_FOUND", "SCOPE_REQUIRED", "STATION_NOT_FOUND",
                 "CANNOT_CHANGE_OWN_ACCOUNT"))
    async def patch(self, staff_id: str) -> None:
        self.write_json(await self.services.auth.update_staff(self.principal, staff_id,
                                                              self.body))


class AuditHandler(ApiHandler):
    @api("The audit trail, newest first", roles=(OPERATOR,), query=AUDIT_QUERY,
         response=AUDIT_LIST, tags=("admin",))
    async def get(self) -> None:
        before = _aware(self.query.get("before"))
        entries = await self.services.audit.list(
            action=self.query.get("action"), actor_id=self.query.get("actor"),
            limit=self.query.get("limit", 50), before=before)
        self.write_json({"entries": entries})


def _aware(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return aware_time(text, code="INVALID_QUERY", field="before", message=(
        "Query parameter 'before' must be an ISO 8601 time with an offset."))


default_handlers = [
    route("/api/v1/admin/staff", StaffHandler),
    route("/api/v1/admin/staff/{staff_id}", StaffMemberHandler),
    route("/api/v1/admin/audit", AuditHandler),
]

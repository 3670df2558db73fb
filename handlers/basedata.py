"""Base data (道路客运基础数据) for staff: ``/api/v1/admin/{kind}`` for stations, carriers,
vehicles, drivers, routes (with their stops), schedules and fares, and bulk imports of the
运政 system's files (``/api/v1/admin/imports/{kind}``). One pair of handlers per kind, made
from the kind's declaration (``server.services.kinds``), so each kind's schemas are its own
in the OpenAPI document."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tornado.web import RequestHandler, URLSpec

from handlers.base import ApiHandler, api, route
from server.errors import DomainError
from server.schema import DIVISION, array, integer, obj, string
from server.security.principal import (
    AUTHORITY,
    FINANCE,
    GATE,
    KIOSK,
    OPERATOR,
    STAFF_ROLES,
    STATION_STAFF,
)
from server.services.kinds import CODE, KINDS, Kind

READERS = (OPERATOR, STATION_STAFF, AUTHORITY, FINANCE)
STATION_READERS = (*READERS, GATE, KIOSK)
# kinds station staff may change (their own station, the routes leaving it)
STATION_WRITES = {"stations": ("patch",), "schedules": ("post", "patch"),
                  "fares": ("post", "patch")}
FILTERS = {"stations": {"division": DIVISION}, "vehicles": {"carrier_id": CODE},
           "drivers": {"carrier_id": CODE},
           "routes": {"origin_station_id": CODE, "destination_station_id": CODE},
           "stops": {"route_id": CODE}, "fares": {"route_id": CODE},
           "schedules": {"route_id": CODE, "station_id": CODE, "carrier_id": CODE}}
IF_MATCH = {"If-Match": {"required": True, "schema": {
    "type": "string", "pattern": '^(W/)?"?[0-9]{1,9}"?$'},
                         "description": "the version the change was made on (its ETag)"}}
_VERSION = re.compile(r'^(?:W/)?"?(\d{1,9})"?$')
UPLOADS = ("text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
ROW_ERROR = obj({"row": integer(1), "field": string(), "code": string(), "message": string()},
                ["row", "code", "message"])
IMPORT_REPORT = obj({
    "kind": string(), "dry_run": {"type": "boolean"}, "rows": integer(0),
    "created": integer(0), "updated": integer(0), "unchanged": integer(0),
    "errors": array(ROW_ERROR), "error_count": integer(0),
    "ignored_columns": array(string())},
    ["dry_run", "created", "updated", "unchanged", "errors"])
PROGRESS_ID = string(8, 64, pattern="^[A-Za-z0-9_-]+$",
                     description="an id of the caller's choosing: how far the work has got "
                                 "is then read at /api/v1/admin/progress/{id}")
IMPORT_QUERY = obj({"dry_run": {"type": "boolean", "description": "report only (default)"},
                    "progress": PROGRESS_ID}, additional=True)


def view_schema(kind: Kind) -> dict[str, Any]:
    props = {k: (string() if k in kind.pii else v) for k, v in kind.properties.items()}
    props.update({"id": string(), "version": integer(0)})
    props.update({name: integer(0) for name in kind.derived})
    if kind.name == "stations":
        props["vendor"] = string()
    return obj(props, ["id", "version"], additional=True)


def version_of(handler: RequestHandler) -> int:
    header = handler.request.headers.get("If-Match", "").strip()
    if not header:
        raise DomainError("IF_MATCH_REQUIRED")
    found = _VERSION.match(header)
    if not found:
        raise DomainError("INVALID_VALUE", "If-Match is the record's version, e.g. \"3\".",
                          field="If-Match")
    return int(found.group(1))


def _roles(kind: Kind, method: str) -> tuple[str, ...]:
    return (OPERATOR, STATION_STAFF) if method in STATION_WRITES.get(kind.name, ()) \
        else (OPERATOR,)


def _handlers(kind: Kind) -> list[URLSpec]:
    view = view_schema(kind)
    page = obj({kind.name: array(view), "total": integer(0)}, [kind.name, "total"])
    query = obj({"q": string(1, 40, description="code or name contains"),
                 "status": string(1, 20), "offset": integer(0, 100_000),
                 "limit": integer(1, 1000), **FILTERS.get(kind.name, {})}, additional=True)
    readers = STATION_READERS if kind.name == "stations" else READERS
    title = f"{kind.label} ({kind.name})"
    not_found = ("RECORD_NOT_FOUND",)
    write_errors = ("REFERENCE_NOT_FOUND", "STOPS_INVALID", "ROUTE_WITHDRAWN",
                    "CARRIER_NOT_ON_ROUTE", "FARE_ABOVE_GUIDE", "INVALID_SEGMENT",
                    "INVALID_ID_NUMBER", "OUT_OF_SCOPE", "STATION_FEE_ABOVE_FARE",
                    "STATION_NOT_ON_ROUTE", "DATE_IN_FUTURE", "DISTANCE_INVALID")

    class Records(ApiHandler):
        @api(f"List {title}: newest code order, filtered, a page at a time", roles=readers,
             query=query, response=page, tags=("base data",), errors=("OUT_OF_SCOPE",))
        async def get(self) -> None:
            q = self.query
            filters = {k: q[k] for k in FILTERS.get(kind.name, {}) if k in q}
            self.write_json(await self.services.basedata.list(
                self.principal, kind, q=q.get("q"), status=q.get("status"),
                filters=filters, skip=q.get("offset", 0), limit=q.get("limit", 100)))

        if kind.name != "stops":
            @api(f"Add {title}", roles=_roles(kind, "post"), body=kind.create_schema,
                 response=view, status=201, idempotent=True, tags=("base data",),
                 errors=("RECORD_EXISTS", *write_errors))
            async def post(self) -> None:
                record = await self.services.basedata.create(self.principal, kind, self.body)
                self.set_header("ETag", f'"{record["version"]}"')
                self.write_json(record)

    class Record(ApiHandler):
        @api(f"One of {title}, with its version as ETag", roles=readers, response=view,
             tags=("base data",), errors=not_found)
        async def get(self, record_id: str) -> None:
            record = await self.services.basedata.get(self.principal, kind, record_id)
            self.set_header("ETag", f'"{record["version"]}"')
            self.write_json(record)

        if kind.name != "stops":
            @api(f"Change {title} (a merge patch: prices merge by ticket type): If-Match "
                 "names the version the change was made on; "
                 "withdrawing is status=withdrawn (nothing is deleted)",
                 roles=_roles(kind, "patch"), body=kind.patch_schema, response=view,
                 headers=IF_MATCH, tags=("base data",),
                 errors=(*not_found, "IF_MATCH_REQUIRED", "VERSION_MISMATCH",
                         "ROUTE_IN_SERVICE", *write_errors))
            async def patch(self, record_id: str) -> None:
                record = await self.services.basedata.patch(
                    self.principal, kind, record_id, version_of(self), self.body)
                self.set_header("ETag", f'"{record["version"]}"')
                self.write_json(record)

    name = kind.name.title().replace("_", "")
    Records.__name__ = Records.__qualname__ = f"Admin{name}Handler"
    Record.__name__ = Record.__qualname__ = f"Admin{name.removesuffix('s')}Handler"
    return [route(f"/api/v1/admin/{kind.name}", Records),
            route(f"/api/v1/admin/{kind.name}/{{record_id}}", Record)]


class ImportHandler(ApiHandler):
    @api("Import a file of the 运政 system (CSV or XLSX, a header row of table 4-1 labels "
         "or field names; money in yuan under Chinese labels): per row created, updated, "
         "unchanged or refused and why. A dry run (the default) writes nothing; a real run "
         "writes all rows or, if any is refused, none (IMPORT_REFUSED with the rows)",
         roles=(OPERATOR,), query=IMPORT_QUERY, response=IMPORT_REPORT, upload=UPLOADS,
         path={"kind": string(enum=list(KINDS))}, tags=("base data",),
         errors=("IMPORT_UNREADABLE", "IMPORT_COLUMNS_MISSING", "IMPORT_REFUSED",
                 "BODY_TOO_LARGE"))
    async def post(self, kind: str) -> None:
        if not self.request.body:
            raise DomainError("IMPORT_UNREADABLE", "Send the file as the request body.")
        await asyncio.sleep(0)
        work = self.query.get("progress")
        self.write_json(await self.services.basedata.import_file(
            self.principal, KINDS[kind], self.request.body,
            dry_run=self.query.get("dry_run", True),
            progress=self.services.progress.reporter(self.principal, work) if work else None))


class ProgressHandler(ApiHandler):
    @api("How far a long request of yours has got (an import named with ?progress=): done of "
         "total and the phase; kept ten minutes", roles=STAFF_ROLES,
         path={"work": PROGRESS_ID},
         response=obj({"done": integer(0), "total": integer(0),
                       "phase": string(description="e.g. reading, checking, writing")},
                      ["done", "total", "phase"]), tags=("base data",), errors=("NOT_FOUND",))
    async def get(self, work: str) -> None:
        got = await self.services.progress.read(self.principal, work)
        if got is None:
            raise DomainError("NOT_FOUND", "No such work of yours under way or just done.")
        self.write_json(got)


default_handlers = [spec for kind in KINDS.values() for spec in _handlers(kind)] + [
    route("/api/v1/admin/imports/{kind}", ImportHandler),
    route("/api/v1/admin/progress/{work}", ProgressHandler)]

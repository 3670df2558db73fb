"""Back-office exports that run as jobs and show their progress: each list that exports asks
for one (``POST /api/v1/admin/invoices/exports``); the export is then read here, polled while
it runs and downloaded when done. Every staff member sees only their own exports."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiHandler, api, route
from server.schema import DATETIME, array, integer, obj, string
from server.security.principal import STAFF_ROLES

EXPORT = obj({
    "id": string(), "kind": string(description="what was exported, e.g. invoices"),
    "format": string(enum=["csv", "xlsx"]),
    "status": string(enum=["running", "done", "failed"]),
    "phase": string(enum=["counting", "reading", "writing", "done"],
                    description="while running: counting the rows, reading them, writing "
                                "the file"),
    "progress": obj({"done": integer(0), "total": integer(0)}, ["done", "total"]),
    "filters": obj({}, additional=True), "filename": string(),
    "rows": integer(0), "size": integer(0, description="bytes of the file"),
    "created_at": DATETIME, "finished_at": DATETIME,
    "expires_at": DATETIME,
    "error": obj({"code": string(), "message": string()}, ["code", "message"])},
    ["id", "kind", "format", "status", "progress", "filename", "created_at", "expires_at"])
FORMAT = {"format": string(enum=["csv", "xlsx"], description="default xlsx")}
ERRORS = ("EXPORT_NOT_FOUND",)


def export_request(filters: dict[str, Any]) -> dict[str, Any]:
    """The body asking for an export of a list: the list's filters and the format."""
    return obj({**FORMAT, **filters})


class ExportsHandler(ApiHandler):
    @api("Your exports of the last day, newest first", roles=STAFF_ROLES,
         response=obj({"exports": array(EXPORT)}, ["exports"]), tags=("exports",))
    async def get(self) -> None:
        self.write_json({"exports": await self.services.exports.mine(self.principal)})


class ExportHandler(ApiHandler):
    @api("One of your exports: its status and progress (rows read of how many)",
         roles=STAFF_ROLES, response=EXPORT, tags=("exports",), errors=ERRORS)
    async def get(self, export_id: str) -> None:
        self.write_json(await self.services.exports.get(self.principal, export_id))


class ExportFileHandler(ApiHandler):
    @api("The file of a finished export", roles=STAFF_ROLES, tags=("exports",),
         content_type="application/octet-stream",
         errors=(*ERRORS, "EXPORT_NOT_READY", "EXPORT_FAILED"))
    async def get(self, export_id: str) -> None:
        name, content_type, data = await self.services.exports.file(self.principal, export_id)
        self.attachment(name, content_type, data)


default_handlers = [
    route("/api/v1/admin/exports", ExportsHandler),
    route("/api/v1/admin/exports/{export_id}", ExportHandler),
    route("/api/v1/admin/exports/{export_id}/file", ExportFileHandler),
]

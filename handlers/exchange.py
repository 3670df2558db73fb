"""Operator views of the exchange layer: station sync health, on-demand sync, ticket sources."""

from __future__ import annotations

from channels import CHANNELS
from handlers.base import ApiHandler, api, route
from server.errors import DomainError
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import array, integer, obj, string
from server.security.principal import AUTHORITY, OPERATOR, STATION_STAFF

STATION_STATUS = obj({"station_id": string(), "name": string(), "vendor": string(),
                      "online": {"type": "boolean"}, "offline_reason": string(),
                      "last_sync": {"type": ["object", "null"]},
                      "sync_running": {"type": ["object", "null"]},
                      "calls_last_hour": {"type": "object"},
                      "p50_ms": {"type": ["number", "null"]},
                      "p99_ms": {"type": ["number", "null"]}},
                     ["station_id", "vendor", "online"], additional=True)
STATUS_LIST = obj({"stations": array(STATION_STATUS), "total": TOTAL,
                   "online": integer(0, description="of the stations matching q, how many "
                                                    "are online")},
                  ["stations", "total", "online"])
STATUS_QUERY = obj({"q": string(1, 40, description="part of the station's code or name"),
                    "online": {"type": "boolean"}, **PAGE_QUERY})
SYNC_BODY = obj({"full": {"type": "boolean"}})
SYNC_RUN = obj({"station_id": string(), "kind": string(), "outcome": string(),
                "counts": {"type": "object"}, "changes": {"type": "array"},
                "duration_ms": {"type": "number"}, "error": string()},
               ["station_id", "kind", "outcome"], additional=True)
# the channels a ticket source can limit (never the station's own window)
LIMITED = CHANNELS.limited()
COUNTS = {"type": "object", "propertyNames": {"enum": LIMITED},
          "additionalProperties": integer(0, 10_000)}
SOURCE_BODY = obj({"allotments": COUNTS, "caps": COUNTS,
                   "closed_channels": array(string(enum=LIMITED), uniqueItems=True),
                   "release_before_minutes": integer(0, 7 * 24 * 60)},
                  ["allotments"])
SOURCE = obj({"scope": string(enum=["departure", "schedule"]), "ref": string(),
              "allotments": COUNTS, "caps": COUNTS, "closed_channels": array(string()),
              "release_before_minutes": integer(0), "configured": {"type": "boolean"}},
             ["scope", "ref", "allotments"])


class ExchangeStatusHandler(ApiHandler):
    @api("Station systems: online state, last sync, call outcomes and latency (last hour)",
         roles=(OPERATOR, AUTHORITY, STATION_STAFF), query=STATUS_QUERY, response=STATUS_LIST,
         tags=("exchange",))
    async def get(self) -> None:
        q = self.query
        rows, total, up = await self.services.sync.status(
            self.principal, q.get("q"), q.get("online"), Page.of(q))
        self.write_json({"stations": rows, "total": total, "online": up})


class StationSyncHandler(ApiHandler):
    @api("Sync one station now (full or incremental)", roles=(OPERATOR,), body=SYNC_BODY,
         response=SYNC_RUN, tags=("exchange",), errors=("STATION_NOT_FOUND",))
    async def post(self, station_id: str) -> None:
        run = await self.services.sync.sync_on_demand(self.principal, station_id,
                                                      full=bool(self.body.get("full")))
        run.pop("_id", None)
        self.write_json(run)


class TicketSourceHandler(ApiHandler):
    @api("The ticket source of a schedule or a departure", roles=(OPERATOR, STATION_STAFF),
         response=SOURCE, tags=("exchange",), errors=("NOT_FOUND",))
    async def get(self, scope: str, ref: str) -> None:
        self.write_json(await self.services.ticket_sources.get(self.principal, _scope(scope),
                                                               ref))

    @api("Set allotments, caps and closed channels of a schedule or departure",
         roles=(OPERATOR,), body=SOURCE_BODY, response=SOURCE, tags=("exchange",),
         errors=("TICKET_SOURCE_INVALID", "DEPARTURE_NOT_FOUND"), idempotent=True)
    async def put(self, scope: str, ref: str) -> None:
        self.write_json(await self.services.ticket_sources.put(
            self.principal, _scope(scope), ref, self.body["allotments"],
            self.body.get("caps", {}), self.body.get("closed_channels", []),
            self.body.get("release_before_minutes", 120)))


def _scope(scope: str) -> str:
    if scope not in ("departure", "schedule"):
        raise DomainError("NOT_FOUND")
    return scope


default_handlers = [
    route("/api/v1/admin/exchange/stations", ExchangeStatusHandler),
    route("/api/v1/admin/stations/{station_id}/sync", StationSyncHandler),
    route("/api/v1/admin/ticket-sources/{scope}/{ref}", TicketSourceHandler),
]

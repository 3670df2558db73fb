"""Base data (道路客运基础数据): stations, carriers, vehicles, drivers, routes with their
stops, schedules and fares — read, created and changed by staff, checked, versioned,
audited and scoped; imported in bulk from the 运政 system's files.

- Checked: references must exist (a schedule on a withdrawn route is refused); no fare may
  exceed its government guide price; a route's stops run from its origin to its destination
  with growing distances.
- Versioned: every record has ``version``; a change names the version it was made on
  (``If-Match``) and is refused if the record moved on meanwhile.
- Scoped: station staff read and change their own station, and the schedules and fares of
  the routes leaving it; everything else is the operator's.
- Never deleted: withdrawing is a status.
- Seen at once: every change tells the network cache of every process (search within a
  second or two); a new or changed timetable plans its departures there and then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pypinyin import Style, lazy_pinyin

from server.clock import local_today
from server.errors import DomainError
from server.schema import validate_body
from server.security.pii import PiiVault, mask_id, mask_phone
from server.security.principal import Principal, region_prefix
from server.services import imports, realname
from server.services.audit import AuditService
from server.services.kinds import KINDS, Kind
from server.services.planning import plan_departures, retime_departures
from server.services.progress import Reporter
from server.services.rules import RuleService
from server.services.search import NetworkCache
from server.storage.network import NetworkRecords


def _pinyin(text: str) -> tuple[str, str]:
    return ("".join(lazy_pinyin(text)).lower(),
            "".join(lazy_pinyin(text, style=Style.FIRST_LETTER)).lower())


@dataclass
class Refs:
    """Referenced records, read once: per call for the API, whole kinds for an import."""

    records: NetworkRecords
    whole: bool = False
    cache: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)
    route_stops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    async def get(self, kind: str, record_id: str) -> dict[str, Any] | None:
        if kind not in self.cache:
            self.cache[kind] = dict(await self.records.all(kind)) if self.whole else {}
        held = self.cache[kind]
        if record_id not in held and not self.whole:
            held[record_id] = await self.records.get(kind, record_id)
        return held.get(record_id)

    async def stops(self, route_id: str) -> list[dict[str, Any]]:
        """The route's stops in order, as the API shows them."""
        if self.whole and not self.route_stops:
            for stop in (await self.records.all("stops")).values():
                self.route_stops.setdefault(stop["route_id"], []).append(stop)
        if route_id not in self.route_stops:
            if self.whole:
                return []
            self.route_stops[route_id], _ = await self.records.find(
                "stops", {"route_id": route_id}, limit=100)
        held = sorted(self.route_stops[route_id], key=lambda s: s["seq"])
        return [{k: s[k] for k in STOP_FIELDS if k in s} for s in held]


STOP_FIELDS = tuple(k for k in KINDS["stops"].properties if k != "route_id")


def _missing(field_name: str, what: str, value: Any) -> DomainError:
    return DomainError("REFERENCE_NOT_FOUND", f"No such {what}: {value!r}.", field=field_name)


class BaseDataService:
    def __init__(self, db: AsyncDatabase[Any], vault: PiiVault, audit: AuditService,
                 network: NetworkCache, rules: RuleService) -> None:
        self._db = db
        self._records = NetworkRecords(db)
        self._vault = vault
        self._audit = audit
        self._network = network
        self._rules = rules

    # --- reading ------------------------------------------------------------------------------
    async def list(self, actor: Principal, kind: Kind, *, q: str | None = None,
                   status: str | None = None, filters: dict[str, str] | None = None,
                   skip: int = 0, limit: int = 50) -> dict[str, Any]:
        query: dict[str, Any] = {**(await self._scope_query(actor, kind))}
        for name, value in (filters or {}).items():
            if name == "division":
                if not actor.in_region(value):
                    raise DomainError("OUT_OF_SCOPE", field="division")
                query["division"] = {"$regex": "^" + region_prefix(value)}
            else:
                query[name] = value
        if status:
            query["status"] = status
        if q:
            like = {"$regex": _literal(q)}
            query["$and"] = [{"$or": [{"_id": like}, {"name": like}]}]
        sort = [("route_id", 1), ("seq", 1)] if kind.name == "stops" else [("_id", 1)]
        found, total = await self._records.find(kind.name, query, skip=skip, limit=limit,
                                                sort=sort)
        views = [await self._view(kind, doc) for doc in found]
        return {kind.name: views, "total": total}

    async def get(self, actor: Principal, kind: Kind, record_id: str) -> dict[str, Any]:
        doc = await self._records.get(kind.name, record_id)
        if doc is None or not await self._in_scope(actor, kind, doc):
            raise DomainError("RECORD_NOT_FOUND", kind=kind.name)
        return await self._view(kind, doc)

    # --- writing ------------------------------------------------------------------------------
    async def create(self, actor: Principal, kind: Kind, fields: dict[str, Any]
                     ) -> dict[str, Any]:
        refs = Refs(self._records)
        doc = await self._checked(kind, fields, None, refs)
        doc["_id"] = kind.record_id(doc)
        if not await self._in_scope(actor, kind, doc, refs):
            raise DomainError("OUT_OF_SCOPE")
        stops = doc.pop("stops", None)
        now = dt.datetime.now(dt.UTC)
        if not await self._records.create(kind.name, doc, now):
            raise DomainError("RECORD_EXISTS", kind=kind.name, id=doc["_id"])
        if stops is not None:
            await self._records.set_stops(doc["_id"], stops, now)
        await self._audit.record(actor, f"{kind.name}.create", target=doc["_id"],
                                 details=_loggable(kind, fields))
        await self._after_write(kind, [doc["_id"]], [], None)
        return await self.get(actor, kind, doc["_id"])

    async def patch(self, actor: Principal, kind: Kind, record_id: str, version: int,
                    changes: dict[str, Any]) -> dict[str, Any]:
        old = await self._records.get(kind.name, record_id)
        refs = Refs(self._records)
        if old is None or not await self._in_scope(actor, kind, old, refs):
            raise DomainError("RECORD_NOT_FOUND", kind=kind.name)
        if int(old.get("version", 0)) != version:
            raise DomainError("VERSION_MISMATCH", version=int(old.get("version", 0)))
        current = _merged(await self._plain(kind, old), changes)
        if kind.name == "routes" and "stops" not in changes:
            current["stops"] = await refs.stops(record_id)
        elif kind.name == "routes" and "distance_km" not in changes:
            current.pop("distance_km", None)  # the new stops say it
        doc = await self._checked(kind, current, old, refs)
        if not await self._in_scope(actor, kind, {**old, **doc}, refs):
            raise DomainError("OUT_OF_SCOPE")  # moved to another station
        stops = doc.pop("stops", None) if "stops" in changes else None
        doc.pop("stops", None)
        diff = {k: v for k, v in doc.items() if k not in kind.key and old.get(k) != v}
        now = dt.datetime.now(dt.UTC)
        if diff or stops is not None:
            done = await self._records.update(kind.name, record_id, version, diff, now)
            if done is None:
                latest = await self._records.get(kind.name, record_id)
                raise DomainError("VERSION_MISMATCH",
                                  version=int((latest or {}).get("version", 0)))
            if stops is not None:
                await self._records.set_stops(record_id, stops, now)
            await self._audit.record(actor, f"{kind.name}.update", target=record_id,
                                     details={"version": version,
                                              **_loggable(kind, changes)})
            await self._after_write(kind, [], [record_id], {record_id: old})
        return await self.get(actor, kind, record_id)

    # --- imports ------------------------------------------------------------------------------
    async def import_file(self, actor: Principal, kind: Kind, body: bytes, *,
                          dry_run: bool = True, progress: Reporter | None = None
                          ) -> dict[str, Any]:
        """A file of the 运政 system, all or nothing: each row created, updated, unchanged or
        refused (why); a dry run or a file with a refused row writes nothing. Importing the
        same file again changes nothing. ``progress`` hears how far it has got: reading the
        file, checking row after row, writing."""
        if progress:
            await progress(0, 0, "reading")
        # parsing a file of 200,000 rows is seconds of CPU: not on the IOLoop
        rows = await asyncio.get_running_loop().run_in_executor(
            None, lambda: imports.records(kind, imports.read_table(body)))
        errors = list(rows.errors)
        refs = Refs(self._records, whole=True)
        held = await self._records.all(kind.name)
        docs: list[dict[str, Any]] = []
        first_row: dict[str, int] = {}
        total = len(rows.docs)
        for done, (n, values) in enumerate(rows.docs, start=1):
            if done % 200 == 0:  # others are served meanwhile
                await asyncio.sleep(0)
                if progress:
                    await progress(done, total, "checking")
            try:
                record_id = kind.record_id(values) \
                    if all(k in values for k in kind.key) else ""
                old = held.get(record_id)
                if old is not None:
                    if not await self._in_scope(actor, kind, old, refs):
                        raise DomainError("OUT_OF_SCOPE")
                    values = _merged(await self._plain(kind, old), values)
                doc = await self._checked(kind, values, old, refs, row=True)
                doc["_id"] = kind.record_id(doc)
                if old is None and not await self._in_scope(actor, kind, doc, refs):
                    raise DomainError("OUT_OF_SCOPE")
                if doc["_id"] in first_row:
                    raise DomainError("DUPLICATE_ROW", f"Row {first_row[doc['_id']]} has the "
                                      f"same code {doc['_id']}.")
            except DomainError as exc:
                errors.append({"row": n, "field": exc.details.get("field", ""),
                               "code": exc.code, "message": exc.message})
                continue
            first_row[doc["_id"]] = n
            docs.append(doc)
        if kind.name == "stops":
            errors += await self._check_imported_stops(docs, first_row, refs)
        if progress:
            await progress(total, total, "writing")
        errors.sort(key=lambda e: e["row"])
        fields = tuple(dict.fromkeys(k for d in docs for k in d if k not in ("_id", "system")))
        now = dt.datetime.now(dt.UTC)
        write = not dry_run and not errors
        mirrored = await self._records.mirror(
            kind.name, docs, fields, at=now, dry_run=not write,
            on_insert=lambda doc: {"created_at": now, **({"system": doc["system"]}
                                                         if "system" in doc else {})})
        report = {"kind": kind.name, "dry_run": dry_run, "rows": len(rows.docs) + len(rows.errors),
                  "created": mirrored.counts["new"], "updated": mirrored.counts["changed"],
                  "unchanged": mirrored.counts["unchanged"], "errors": errors[:500],
                  "error_count": len(errors), "ignored_columns": rows.ignored_columns}
        if errors and not dry_run:
            raise DomainError("IMPORT_REFUSED", **{k: v for k, v in report.items()
                                                   if k != "kind"})
        if write:
            await self._audit.record(actor, f"{kind.name}.import", details={
                k: report[k] for k in ("rows", "created", "updated", "unchanged")})
            if mirrored.counts["new"] or mirrored.counts["changed"]:
                await self._after_write(kind, mirrored.new_ids,
                                        [old["_id"] for old, _ in mirrored.changed],
                                        {old["_id"]: old for old, _ in mirrored.changed})
        return report

    async def _check_imported_stops(self, docs: list[dict[str, Any]],
                                    first_row: dict[str, int], refs: Refs
                                    ) -> list[dict[str, Any]]:
        """Each route's stops as they will be after the import, checked as a whole."""
        by_route: dict[str, dict[int, dict[str, Any]]] = {}
        for doc in docs:
            by_route.setdefault(doc["route_id"], {})[doc["seq"]] = doc
        errors = []
        for route_id, incoming in by_route.items():
            route = await refs.get("routes", route_id)
            held = {s["seq"]: s for s in await refs.stops(route_id)}
            merged = {**held, **{seq: {k: v for k, v in d.items() if k in STOP_FIELDS}
                                 for seq, d in incoming.items()}}
            seqs = sorted(merged)
            try:
                if seqs != list(range(len(seqs))):
                    raise DomainError("STOPS_INVALID", "Stops are numbered 0, 1, 2… without "
                                      "gaps.", field="seq")
                await self._check_route_stops(route or {}, [dict(merged[i]) for i in seqs],
                                              refs)
            except DomainError as exc:
                row = min(first_row[d["_id"]] for d in incoming.values())
                errors.append({"row": row, "field": exc.details.get("field", ""),
                               "code": exc.code, "message": f"{route_id}: {exc.message}"})
        return errors

    async def _after_write(self, kind: Kind, created: list[str], changed: list[str],
                           before: dict[str, dict[str, Any]] | None) -> None:
        """Search sees it within seconds; a timetable change reaches its departures."""
        await self._network.changed()
        if kind.name != "schedules":
            return
        ids = created + changed
        sale_days = (await self._rules.current()).sale_days
        await plan_departures(self._db, local_today(), sale_days + 1, schedule_ids=ids)
        for schedule_id in changed:
            old = (before or {}).get(schedule_id) or {}
            new = await self._records.get("schedules", schedule_id)
            if new and old.get("departs_at_local") != new["departs_at_local"]:
                await retime_departures(self._db, new)

    # --- checks -------------------------------------------------------------------------------
    async def _checked(self, kind: Kind, values: dict[str, Any], old: dict[str, Any] | None,
                       refs: Refs, *, row: bool = False) -> dict[str, Any]:
        """The record as it will be stored, or the DomainError that refuses it."""
        validate_body(kind.import_schema if row else kind.create_schema,
                      {k: v for k, v in values.items() if k in kind.properties})
        doc = {k: v for k, v in values.items() if k in kind.properties}
        if old is None and "status" in kind.properties:
            doc.setdefault("status", "active")
        await getattr(self, f"_check_{kind.name}")(doc, refs, old)
        return doc

    async def _check_stations(self, doc: dict[str, Any], _refs: Refs, old: Any) -> None:
        doc["location"] = {"type": "Point", "coordinates": [doc.pop("lng"), doc.pop("lat")]}
        doc["name_pinyin"], doc["name_initials"] = _pinyin(doc["name"])
        doc["city_pinyin"], doc["city_initials"] = _pinyin(doc["city"])
        if old is None:
            doc["system"] = {"vendor": "native"}

    async def _check_carriers(self, doc: dict[str, Any], _refs: Refs, _old: Any) -> None:
        return None

    async def _carrier(self, doc: dict[str, Any], refs: Refs) -> None:
        carrier = await refs.get("carriers", doc["carrier_id"])
        if carrier is None:
            raise _missing("carrier_id", "carrier", doc["carrier_id"])

    async def _check_vehicles(self, doc: dict[str, Any], refs: Refs, _old: Any) -> None:
        await self._carrier(doc, refs)
        made = doc.get("manufactured_on")
        if made and made > local_today().isoformat():
            raise DomainError("DATE_IN_FUTURE", "A vehicle cannot be made in the future.",
                              field="manufactured_on")

    async def _check_drivers(self, doc: dict[str, Any], refs: Refs,
                             old: dict[str, Any] | None) -> None:
        await self._carrier(doc, refs)
        if "id_no" in doc:
            document = realname.validate("resident_id", doc["id_no"], local_today())
            index = realname.id_index(self._vault, document)
            if old and old.get("id_no_index") == index:  # unchanged: keep its ciphertext
                doc["id_no"] = old["id_no"]
            else:
                doc["id_no"] = self._vault.encrypt("driver.id_no", document.id_no)
            doc["id_no_index"] = index
            if "gender" not in doc:  # the 17th digit: odd for men
                doc["gender"] = "M" if int(document.id_no[16]) % 2 else "F"
        if "phone" in doc:
            phone = doc["phone"][-11:]
            index = self._vault.index("phone", phone)
            doc["phone"] = old["phone"] if old and old.get("phone_index") == index \
                else self._vault.encrypt("driver.phone", phone)
            doc["phone_index"] = index

    async def _check_routes(self, doc: dict[str, Any], refs: Refs,
                            old: dict[str, Any] | None) -> None:
        for name in ("origin_station_id", "destination_station_id"):
            station = await refs.get("stations", doc[name])
            if station is None or station.get("status") == "withdrawn":
                raise _missing(name, "active station", doc[name])
        if doc["origin_station_id"] == doc["destination_station_id"]:
            raise DomainError("STOPS_INVALID", "A route ends elsewhere than it starts.",
                              field="destination_station_id")
        for carrier_id in doc["carrier_ids"]:
            if await refs.get("carriers", carrier_id) is None:
                raise _missing("carrier_ids", "carrier", carrier_id)
        if "stops" not in doc:  # a row of a file: its stops come as rows of their own
            if "distance_km" not in doc:
                raise DomainError("MISSING_FIELD", "A route without its stops states its "
                                  "total distance.", field="distance_km")
            return self._check_highway(doc)
        stops = doc["stops"]
        await self._check_route_stops(doc, stops, refs)
        if old is not None and stops:
            held = await refs.stops(doc["code"])
            if [s.get("station_id") for s in held] != [s.get("station_id") for s in stops] \
                    and await self._records.count("schedules", {"route_id": doc["code"]}):
                raise DomainError("ROUTE_IN_SERVICE", field="stops")
        doc["stops"] = [{**s, "_id": f"{doc['code']}-{i}", "route_id": doc["code"], "seq": i}
                        for i, s in enumerate(stops)]
        if doc.get("distance_km", stops[-1]["distance_km"]) != stops[-1]["distance_km"]:
            raise DomainError("DISTANCE_INVALID", "The total distance is the last stop's.",
                              field="distance_km")
        doc["distance_km"] = stops[-1]["distance_km"]
        self._check_highway(doc)

    @staticmethod
    def _check_highway(doc: dict[str, Any]) -> None:
        if doc.get("highway_km", 0) > doc["distance_km"]:
            raise DomainError("DISTANCE_INVALID", field="highway_km")

    async def _check_route_stops(self, route: dict[str, Any], stops: list[dict[str, Any]],
                                 refs: Refs) -> None:
        """From the origin to the destination, distances growing from 0; boarding nowhere
        at the last stop, alighting nowhere at the first."""
        if len(stops) < 2:
            raise DomainError("STOPS_INVALID", "A route has two stops at least.", field="stops")
        first, last = stops[0], stops[-1]
        if first.get("station_id") != route["origin_station_id"] or \
                last.get("station_id") != route["destination_station_id"]:
            raise DomainError("STOPS_INVALID", "The first stop is the origin station and the "
                              "last the destination.", field="stops")
        if first["distance_km"] != 0 or any(
                b["distance_km"] <= a["distance_km"] for a, b in itertools.pairwise(stops)):
            raise DomainError("STOPS_INVALID", "Stop distances start at 0 and grow along "
                              "the route.", field="stops")
        for i, stop in enumerate(stops):
            if stop.get("station_id") and await refs.get("stations", stop["station_id"]) \
                    is None:
                raise _missing(f"stops[{i}].station_id", "station", stop["station_id"])
            stop.setdefault("boarding", i < len(stops) - 1)
            stop.setdefault("alighting", i > 0)
        if stops[-1]["boarding"] or stops[0]["alighting"]:
            raise DomainError("STOPS_INVALID", "Nobody boards at the last stop or alights at "
                              "the first.", field="stops")

    async def _check_stops(self, doc: dict[str, Any], refs: Refs, _old: Any) -> None:
        """A stop on its own (imports): its route exists; the route's stops as a whole are
        checked once the file's rows are in (``check_route_stops``)."""
        if await refs.get("routes", doc["route_id"]) is None:
            raise _missing("route_id", "route", doc["route_id"])
        if doc.get("station_id") and await refs.get("stations", doc["station_id"]) is None:
            raise _missing("station_id", "station", doc["station_id"])

    async def _active_route(self, doc: dict[str, Any], refs: Refs) -> dict[str, Any]:
        route = await refs.get("routes", doc["route_id"])
        if route is None:
            raise _missing("route_id", "route", doc["route_id"])
        if route.get("status") == "withdrawn":
            raise DomainError("ROUTE_WITHDRAWN", field="route_id")
        return route

    async def _check_schedules(self, doc: dict[str, Any], refs: Refs, _old: Any) -> None:
        route = await self._active_route(doc, refs)
        doc.setdefault("station_id", route["origin_station_id"])
        stops = await refs.stops(route["_id"])
        boarding = {s.get("station_id") for s in stops if s.get("boarding", True)}
        if doc["station_id"] not in boarding | {route["origin_station_id"]}:
            raise DomainError("STATION_NOT_ON_ROUTE", field="station_id")
        if await refs.get("carriers", doc["carrier_id"]) is None:
            raise _missing("carrier_id", "carrier", doc["carrier_id"])
        if doc["carrier_id"] not in route.get("carrier_ids", []):
            raise DomainError("CARRIER_NOT_ON_ROUTE", field="carrier_id")
        doc.setdefault("nature", "regular")
        doc.setdefault("type", "normal")

    async def _check_fares(self, doc: dict[str, Any], refs: Refs, _old: Any) -> None:
        route = await self._active_route(doc, refs)
        stops = await refs.stops(route["_id"])
        frm, to = doc["from_seq"], doc["to_seq"]
        if not 0 <= frm < to < len(stops):
            raise DomainError("INVALID_SEGMENT", field="to_seq")
        guide = doc["guide_price"]
        for ticket_type, price in doc["prices"].items():
            if price > guide:
                raise DomainError("FARE_ABOVE_GUIDE", f"The {ticket_type} fare {price} fen is "
                                  f"above the guide price {guide} fen.",
                                  field=f"prices.{ticket_type}")
        doc.setdefault("station_fee", 0)
        if doc["station_fee"] > doc["prices"]["adult"]:
            raise DomainError("STATION_FEE_ABOVE_FARE", field="station_fee")
        doc["distance_km"] = stops[to]["distance_km"] - stops[frm]["distance_km"]
        doc.setdefault("effective_from", dt.datetime(2000, 1, 1, tzinfo=dt.UTC))

    # --- scope --------------------------------------------------------------------------------
    async def _station_of(self, kind: Kind, doc: dict[str, Any], refs: Refs) -> str | None:
        if kind.station_field == "route":
            route = await refs.get("routes", doc["route_id"])
            return route.get("origin_station_id") if route else None
        return doc.get(kind.station_field or "")

    async def _in_scope(self, actor: Principal, kind: Kind, doc: dict[str, Any],
                        refs: Refs | None = None) -> bool:
        if actor.station_id and kind.station_field:
            return await self._station_of(kind, doc, refs or Refs(self._records)) \
                == actor.station_id
        if actor.region and kind.name == "stations":
            return actor.in_region(doc.get("division"))
        return True

    async def _scope_query(self, actor: Principal, kind: Kind) -> dict[str, Any]:
        if actor.station_id and kind.station_field == "route":
            routes, _ = await self._records.find(
                "routes", {"origin_station_id": actor.station_id}, limit=10_000)
            return {"route_id": {"$in": [r["_id"] for r in routes]}}
        if actor.station_id and kind.station_field:
            return {kind.station_field: actor.station_id}
        if actor.region and kind.name == "stations":
            return {"division": {"$regex": "^" + region_prefix(actor.region)}}
        return {}

    async def changed_rows(self, kind: Kind, start: dt.datetime, end: dt.datetime
                           ) -> tuple[list[str], list[list[Any]]]:
        """The records of ``kind`` changed in [start, end) as rows under the 运政 file labels
        (money in yuan, personal data masked): what the ministry's daily files carry."""
        fields = [f for f in kind.labels if f in kind.properties]
        rows = []
        async for doc in self._db[kind.name].find(
                {"updated_at": {"$gte": start, "$lt": end}}).sort("_id", 1):
            view = await self._view(kind, doc)
            rows.append([doc["_id"], *(f"{view[f] / 100:.2f}" if f in kind.yuan
                                       and isinstance(view.get(f), int) else view.get(f)
                                       for f in fields),
                         view.get("version"), doc.get("updated_at")])
        return [kind.labels[f] for f in fields], rows

    # --- views --------------------------------------------------------------------------------
    async def _plain(self, kind: Kind, doc: dict[str, Any]) -> dict[str, Any]:
        """A stored record in the API's terms, unmasked (to check a change against)."""
        out = {k: doc[k] for k in kind.properties if k in doc}
        if kind.name == "stations":
            out["lng"], out["lat"] = doc["location"]["coordinates"]
        for name in kind.pii:
            if name in out:
                out[name] = self._vault.decrypt(f"driver.{name}", doc[name])
        return out

    async def _view(self, kind: Kind, doc: dict[str, Any]) -> dict[str, Any]:
        out = await self._plain(kind, doc)
        if "id_no" in kind.pii and "id_no" in out:
            out["id_no"] = mask_id(out["id_no"])
        if "phone" in kind.pii and "phone" in out:
            out["phone"] = mask_phone(out["phone"])
        out.update({"id": doc["_id"], "version": int(doc.get("version", 0))})
        for name in kind.derived:
            if name in doc:
                out[name] = doc[name]
        if kind.name == "stations":
            out["vendor"] = (doc.get("system") or {}).get("vendor", "native")
        if kind.name == "routes":
            out["stops"] = await Refs(self._records).stops(doc["_id"])
        return out


def _merged(held: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A change over a record, as a JSON merge patch (RFC 7386) does it: an object (a fare's
    prices) merged key by key, anything else replaced."""
    out = dict(held)
    for name, value in changes.items():
        if isinstance(value, dict) and isinstance(held.get(name), dict):
            out[name] = {**held[name], **value}
        else:
            out[name] = value
    return out


def _literal(text: str) -> str:
    return "".join("\\" + c if not c.isalnum() else c for c in text)


def _loggable(kind: Kind, fields: dict[str, Any]) -> dict[str, Any]:
    """What the audit keeps of a change: personal fields masked."""
    out = dict(fields)
    if "id_no" in kind.pii and "id_no" in out:
        out["id_no"] = mask_id(str(out["id_no"]))
    if "phone" in kind.pii and "phone" in out:
        out["phone"] = mask_phone(str(out["phone"])[-11:])
    return out

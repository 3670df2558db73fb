"""E-tickets at the gate (检票): dynamic codes, admit-once scans, manifests, offline gates.

Keys: Ed25519 signing keys live in ``gate_keys`` (the private half sealed with the PII
vault). The newest signs; a rotated-out key still verifies for ``KEY_GRACE`` — longer than any
code or offline bundle it signed lives — and is then dropped from the verifying set.

A scan is judged in a fixed order and every scan is written to ``gate_scans``: forged →
expired code → not a ticket of this station / departure → refunded, voided, cancelled →
too early / departed → real name → admitted once (a guarded ``issued → checked_in`` update:
of two gates scanning one ticket at once, exactly one wins; the other hears
``already_used`` with when and which gate).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ, local_today
from server.errors import DomainError, aware_time, calendar_day
from server.security import ticketcode
from server.security.pii import PiiVault
from server.security.principal import Principal
from server.services.audit import AuditService
from server.services.realname import same_person
from server.storage.departures import DepartureRecords
from server.storage.gate import GateRecords
from server.storage.orders import OrderBook

KEY_GRACE = dt.timedelta(days=2)
KEY_CACHE_SECONDS = 30.0
CHECKIN_OPENS = dt.timedelta(minutes=60)  # before departure
CHECKIN_CLOSES = dt.timedelta(minutes=2)  # after departure: the bus is gone
BUNDLE_TTL = dt.timedelta(hours=30)
OFFLINE_CLOCK_SKEW = dt.timedelta(minutes=5)  # a gate's clock may be this far off
VALID_FOR_GATE = ("issued", "picked_up")
REVOKED = {"refunded": "refunded", "voided": "voided", "changed": "voided",
           "released": "voided", "refunding": "refunded", "voiding": "voided"}
OUTCOMES = ("admitted", "already_used", "refunded", "voided", "departure_cancelled",
            "wrong_departure", "wrong_station", "too_early", "departed", "expired_code",
            "forged", "identity_mismatch")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _mask_name(name: str) -> str:
    return name[:1] + "*" * max(1, len(name) - 1)


def _days(date: str | None) -> list[str]:
    """The service days a gate works with: the one asked for, else today's and tomorrow's."""
    if date:
        return [calendar_day(date, code="INVALID_QUERY", field="date").isoformat()]
    today = local_today()
    return [today.isoformat(), (today + dt.timedelta(days=1)).isoformat()]


def _local(value: dt.datetime | None) -> str | None:
    return value.astimezone(LOCAL_TZ).isoformat() if value else None


def _scan_time(scan: dict[str, Any], index: int) -> dt.datetime:
    """When an offline scan was made — only a time some bundle was valid at is believed: a
    gate cannot have judged a code offline before its bundle was made, after it expired, or
    in the future."""
    field = f"scans[{index}].scanned_at"
    at = aware_time(scan["scanned_at"], code="INVALID_VALUE", field=field,
                    message="scanned_at is an ISO 8601 time with its UTC offset.")
    now = dt.datetime.now(dt.UTC)
    earliest, latest = now - BUNDLE_TTL, now + OFFLINE_CLOCK_SKEW
    if scan.get("bundle_issued_at"):
        issued = aware_time(scan["bundle_issued_at"], code="INVALID_VALUE",
                            field=f"scans[{index}].bundle_issued_at",
                            message="bundle_issued_at is an ISO 8601 time with its offset.")
        earliest = max(earliest, issued - OFFLINE_CLOCK_SKEW)
        latest = min(latest, issued + BUNDLE_TTL)
    if not earliest <= at <= latest:
        raise DomainError("OFFLINE_SCAN_OUT_OF_BUNDLE", field=field)
    return at


def _signoff(doc: dict[str, Any]) -> dict[str, Any]:
    return {"at": _local(doc["at"]), "by": doc["by"], "driver_name": doc["driver_name"],
            "vehicle_plate": doc.get("vehicle_plate", ""), "sold": doc["sold"],
            "checked_in": doc["checked_in"], "children": doc["children"],
            "no_shows": doc["no_shows"]}


class GateKeys:
    def __init__(self, db: AsyncDatabase[Any], vault: PiiVault) -> None:
        self._db = db
        self._records = GateRecords(db)
        self._vault = vault
        self._signing: tuple[int, Ed25519PrivateKey] | None = None
        self._verifying: dict[int, Ed25519PublicKey] = {}
        self._loaded_at = 0.0
        self._forced_at = 0.0

    async def _load(self, force: bool = False) -> None:
        if not force and self._signing and time.monotonic() - self._loaded_at < KEY_CACHE_SECONDS:
            return
        cutoff = dt.datetime.now(dt.UTC) - KEY_GRACE
        docs = await self._db.gate_keys.find(
            {"$or": [{"retired_at": None}, {"retired_at": {"$gt": cutoff}}]}).sort(
            [("created_at", -1), ("_id", -1)]).to_list()
        if not docs:
            await self.rotate()
            return
        current = next((d for d in docs if d.get("retired_at") is None), docs[0])
        pem = self._vault.decrypt("gate_key", current["private_enc"]).encode()
        private = serialization.load_pem_private_key(pem, None)
        assert isinstance(private, Ed25519PrivateKey)
        self._signing = (int(current["_id"]), private)
        self._verifying = {int(d["_id"]): Ed25519PublicKey.from_public_bytes(
            base64.urlsafe_b64decode(d["public"] + "==")) for d in docs}
        self._loaded_at = time.monotonic()

    async def rotate(self) -> int:
        """A new signing key; the previous one keeps verifying for ``KEY_GRACE``.

        Processes rotating at once (all starting on an empty store) agree without a lock: the
        newest key by (created_at, id) is current. After its insert, each rotation retires the
        keys older than the newest it sees; the newest of all is older than none, so nobody
        retires it, and the last rotation to look sees every key and leaves it alone current
        (however late an older key's insert lands)."""
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        now = dt.datetime.now(dt.UTC)
        kid = secrets.randbelow(2**32 - 1) + 1
        await self._records.add_key({
            "_id": kid, "alg": "Ed25519", "public": _b64(_raw_public(key.public_key())),
            "private_enc": self._vault.encrypt("gate_key", pem), "created_at": now,
            "retired_at": None})
        await self._records.retire_all_but_newest(now)
        await self._load(force=True)
        return kid

    async def signing(self) -> tuple[int, Ed25519PrivateKey]:
        await self._load()
        assert self._signing is not None
        return self._signing

    async def verifying(self, kid: int | None = None) -> dict[int, Ed25519PublicKey]:
        """The verifying keys; a key id we do not know (made by another process since our
        last look) reloads them, at most once a second."""
        await self._load()
        if kid is not None and kid not in self._verifying and \
                time.monotonic() - self._forced_at > 1.0:
            self._forced_at = time.monotonic()
            await self._load(force=True)
        return self._verifying

    async def public(self) -> list[dict[str, Any]]:
        keys = await self.verifying()
        return [{"kid": kid, "alg": "Ed25519", "x": _b64(_raw_public(k))}
                for kid, k in keys.items()]


class GateService:
    def __init__(self, db: AsyncDatabase[Any], vault: PiiVault, keys: GateKeys,
                 audit: AuditService) -> None:
        self._db = db
        self._vault = vault
        self._audit = audit
        self._records = GateRecords(db)
        self._book = OrderBook(db)  # tickets are written by their aggregate's owner
        self.keys = keys

    async def rotate_key(self, actor: Principal) -> int:
        """An operator rotates the signing key (audited); the new key's id."""
        kid = await self.keys.rotate()
        await self._audit.record(actor, "gate.key_rotated", target=str(kid))
        return kid

    # --- the passenger's code -----------------------------------------------------------------
    async def code_for(self, ticket: dict[str, Any], departure: dict[str, Any],
                       now: float | None = None) -> dict[str, Any]:
        """The current dynamic code of an issued ticket, and its static pickup code."""
        if ticket["status"] not in VALID_FOR_GATE:
            raise DomainError("TICKET_NOT_VALID", status=ticket["status"])
        now = time.time() if now is None else now
        kid, key = await self.keys.signing()
        step = ticketcode.step_at(now)
        code = ticketcode.sign(ticketcode.TicketCode(
            kid, ticket["ticket_no"], ticketcode.departure_hash(ticket["departure_id"]),
            int(ticket.get("seat") or 0), int(departure["departs_at"].timestamp()), step), key)
        pickup = ticket.get("pickup_code") or await self._pickup_code(ticket)
        changes_at = (step + 1) * ticketcode.STEP_SECONDS
        return {"ticket_no": ticket["ticket_no"], "code": code, "step": step,
                "refresh_in": round(changes_at - now, 1),
                "valid_until": dt.datetime.fromtimestamp(
                    changes_at + ticketcode.STEP_SECONDS, LOCAL_TZ).isoformat(),
                "pickup_code": pickup}

    async def _pickup_code(self, ticket: dict[str, Any]) -> str:
        """Eight digits for a kiosk or a window, given once per ticket."""
        return await self._book.pickup_code(ticket["_id"], f"{secrets.randbelow(10**8):08d}")

    # --- scanning -----------------------------------------------------------------------------
    async def scan(self, actor: Principal, code: str, *, departure_id: str | None = None,
                   gate_id: str = "", id_no: str | None = None, id_type: str = "resident_id",
                   at: dt.datetime | None = None, nonce: str | None = None,
                   source: str = "online") -> dict[str, Any]:
        """Judge one scan and admit at most once; the answer has a stable ``outcome``."""
        now = at or dt.datetime.now(dt.UTC)
        gate = gate_id or actor.id
        record: dict[str, Any] = {"_id": nonce or uuid.uuid4().hex, "at": now,
                                  "gate": gate, "station_id": actor.station_id,
                                  "staff_id": actor.id, "source": source,
                                  "departure_id": departure_id, "realname": "not_checked"}
        result = await self._judge(actor, code, departure_id, gate, id_no, id_type, now, record)
        record.update(outcome=result["outcome"], ticket_no=result.get("ticket_no"))
        await self._records.scan(record)  # an upload repeated: the first record stands
        return result

    async def _judge(self, actor: Principal, text: str, departure_id: str | None, gate: str,
                     id_no: str | None, id_type: str, now: dt.datetime,
                     record: dict[str, Any]) -> dict[str, Any]:
        try:
            try:
                kid = ticketcode.parse(text)[0].kid
            except ticketcode.CodeError:
                kid = None
            code = ticketcode.verify(text, await self.keys.verifying(kid))
        except ticketcode.CodeError as exc:
            record["detail"] = str(exc)
            return {"outcome": "forged"}
        record["kid"], record["step"] = code.kid, code.step
        current = ticketcode.step_at(now.timestamp())
        if code.step < current - 1:
            return {"outcome": "expired_code", "ticket_no": code.ticket_no}
        if code.step > current + 1:  # not one we issued yet: clocks apart, or made up
            return {"outcome": "forged", "ticket_no": code.ticket_no}
        ticket, dep = await self._ticket_and_departure(code.ticket_no)
        if ticket is None or ticketcode.departure_hash(ticket["departure_id"]) != \
                code.departure_hash:
            return {"outcome": "forged", "ticket_no": code.ticket_no}
        base = {"ticket_no": ticket["ticket_no"], "departure_id": ticket["departure_id"],
                "seat": ticket.get("seat"), "passenger": _mask_name(ticket["passenger"]["name"]),
                "ticket_type": ticket["ticket_type"],
                "departs_at": _local(dep.get("departs_at"))}
        if actor.station_id and dep.get("station_id") != actor.station_id:
            return {**base, "outcome": "wrong_station"}
        if departure_id and ticket["departure_id"] != departure_id:
            return {**base, "outcome": "wrong_departure"}
        if ticket["status"] == "checked_in":
            return {**base, **self._used(ticket)}
        if ticket["status"] in REVOKED:
            return {**base, "outcome": REVOKED[ticket["status"]]}
        if dep.get("status") == "cancelled":
            return {**base, "outcome": "departure_cancelled"}
        departs = dep["departs_at"]
        if now < departs - CHECKIN_OPENS:
            return {**base, "outcome": "too_early",
                    "opens_at": _local(departs - CHECKIN_OPENS)}
        if now > departs + CHECKIN_CLOSES or dep.get("status") == "departed":
            return {**base, "outcome": "departed"}
        if id_no is not None:
            record["realname"] = "match" if same_person(self._vault, ticket["passenger"],
                                                        id_type, id_no) else "mismatch"
            if record["realname"] == "mismatch":
                return {**base, "outcome": "identity_mismatch", "realname": "mismatch"}
        admitted = await self._book.check_in(ticket["_id"], list(VALID_FOR_GATE), {
            "at": now, "gate": gate, "station_id": actor.station_id, "staff_id": actor.id,
            "realname": record["realname"]})
        if not admitted:  # another gate won, or it was refunded in between
            ticket = await self._db.tickets.find_one({"_id": ticket["_id"]}) or ticket
            if ticket["status"] == "checked_in":
                return {**base, **self._used(ticket)}
            return {**base, "outcome": REVOKED.get(ticket["status"], "voided")}
        return {**base, "outcome": "admitted", "realname": record["realname"]}

    async def _ticket_and_departure(self, ticket_no: str
                                    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The ticket and its departure as they are now, in one round trip to the store."""
        found = await (await self._db.tickets.aggregate([
            {"$match": {"ticket_no": ticket_no}}, {"$limit": 1},
            {"$lookup": {"from": "departures", "localField": "departure_id",
                         "foreignField": "_id", "as": "departure"}}])).to_list()
        if not found:
            return None, {}
        ticket = found[0]
        deps = ticket.pop("departure")
        return ticket, deps[0] if deps else {}

    @staticmethod
    def _used(ticket: dict[str, Any]) -> dict[str, Any]:
        checked = ticket.get("checked_in") or {}
        return {"outcome": "already_used", "used_at": _local(checked.get("at")),
                "used_gate": checked.get("gate", "")}

    # --- manifest -----------------------------------------------------------------------------
    async def manifest(self, actor: Principal, departure_id: str) -> dict[str, Any]:
        dep = await self._db.departures.find_one({"_id": departure_id})
        if dep is None or not await self._may_see_station(actor, dep["station_id"]):
            raise DomainError("DEPARTURE_NOT_FOUND")
        tickets = await self._db.tickets.find(
            {"departure_id": departure_id,
             "status": {"$in": [*VALID_FOR_GATE, "checked_in"]}}).sort("seat", 1).to_list()
        orders = {o["order_no"]: o async for o in self._db.orders.find(
            {"order_no": {"$in": sorted({t["order_no"] for t in tickets})}},
            {"order_no": 1, "children": 1})}
        rows = []
        for t in tickets:
            checked = t.get("checked_in") or {}
            rows.append({
                "ticket_no": t["ticket_no"], "seat": t.get("seat"),
                "ticket_type": t["ticket_type"], "status": t["status"],
                "passenger": {"name": _mask_name(t["passenger"]["name"]),
                              "id_type": t["passenger"]["id_type"],
                              "id_no": t["passenger"]["id_no_masked"]},
                "children": [{"name": _mask_name(c["name"])} for c in
                             (orders.get(t["order_no"]) or {}).get("children", [])],
                "checked_in": bool(checked), "checked_in_at": _local(checked.get("at")),
                "gate": checked.get("gate")})
        # one order's children ride with its first ticket only
        seen: set[str] = set()
        for t, row in zip(tickets, rows, strict=True):
            if t["order_no"] in seen:
                row["children"] = []
            seen.add(t["order_no"])
        signed = await self._db.departure_signoffs.find_one({"_id": departure_id})
        return {"departure_id": departure_id, "station_id": dep["station_id"],
                "departs_at": _local(dep["departs_at"]), "status": dep["status"],
                "signed_off": _signoff(signed) if signed else None,
                "seats": dep["seats"], "sold": len(rows),
                "checked_in": sum(r["checked_in"] for r in rows),
                "children": sum(len(r["children"]) for r in rows), "passengers": rows}

    async def sign_off(self, actor: Principal, departure_id: str, driver_name: str,
                       vehicle_plate: str) -> dict[str, Any]:
        """发车签字: the station and the driver sign the manifest as it stands; the count is
        kept, and a native departure is marked departed (gates answer ``departed``)."""
        manifest = await self.manifest(actor, departure_id)
        now = dt.datetime.now(dt.UTC)
        record = {"_id": departure_id, "at": now, "by": actor.id, "station_id":
                  manifest["station_id"], "driver_name": driver_name,
                  "vehicle_plate": vehicle_plate, "sold": manifest["sold"],
                  "checked_in": manifest["checked_in"], "children": manifest["children"],
                  "no_shows": [r["ticket_no"] for r in manifest["passengers"]
                               if not r["checked_in"]]}
        if not await self._records.sign_off(record):
            raise DomainError("ALREADY_SIGNED_OFF")
        await DepartureRecords(self._db).departed(departure_id, now)
        signed = _signoff(record)
        await self._audit.record(actor, "departure.signed_off", target=departure_id,
                                 details=signed)
        return signed

    async def departures(self, actor: Principal, date: str | None) -> list[dict[str, Any]]:
        """The station's departures of a day, for the gate page's picker; without a day, those
        a gate can still board: of the current and the next service day (a bus leaving at 00:10
        boards before midnight), not yet past the close of check-in."""
        deps = await self._station_days(actor.station_id, _days(date))
        if date is None:
            gone = dt.datetime.now(dt.UTC) - CHECKIN_CLOSES
            deps = [d for d in deps if d["departs_at"] >= gone]
        routes = {r["_id"]: r.get("name", "") async for r in self._db.routes.find(
            {"_id": {"$in": sorted({d["route_id"] for d in deps})}}, {"name": 1})}
        return [{"id": d["_id"], "departs_at": _local(d["departs_at"]),
                 "route_name": routes.get(d["route_id"], ""), "status": d["status"]}
                for d in deps]

    async def _station_days(self, station_id: str | None, days: list[str]
                            ) -> list[dict[str, Any]]:
        # a query per day: each uses the station/day/time index ($in does not on SecantusDB)
        found: list[dict[str, Any]] = []
        for day in days:
            found += await self._db.departures.find(
                {"station_id": station_id, "service_date": day}).sort("departs_at", 1).to_list()
        return found

    # --- offline gates ------------------------------------------------------------------------
    async def bundle(self, actor: Principal, station_id: str, date: str | None
                     ) -> dict[str, Any]:
        """What a gate needs to judge codes without the network, signed with the current key:
        the verifying keys, the valid tickets of the day's departures and the revoked ones
        (without a day: the current and the next service day, as for the picker)."""
        if actor.station_id and station_id != actor.station_id:
            raise DomainError("OUT_OF_SCOPE")
        days = _days(date)
        deps = await self._station_days(station_id, days)
        by_id = {d["_id"]: d for d in deps}
        tickets, revoked, used = [], [], []
        async for t in self._db.tickets.find({"departure_id": {"$in": list(by_id)}}):
            if t["status"] in VALID_FOR_GATE:
                tickets.append({"t": t["ticket_no"], "d": t["departure_id"],
                                "s": t.get("seat"), "p": _mask_name(t["passenger"]["name"]),
                                "y": t["ticket_type"]})
            elif t["status"] == "checked_in":
                used.append(t["ticket_no"])
            elif t["status"] in REVOKED:
                revoked.append(t["ticket_no"])
        now = dt.datetime.now(dt.UTC)
        payload = {
            "station_id": station_id, "dates": days, "issued_at": now.isoformat(),
            "valid_until": (now + BUNDLE_TTL).isoformat(), "keys": await self.keys.public(),
            "step_seconds": ticketcode.STEP_SECONDS,
            "checkin_opens_minutes": CHECKIN_OPENS.seconds // 60,
            "checkin_closes_minutes": CHECKIN_CLOSES.seconds // 60,
            "departures": [{"id": d["_id"], "h": ticketcode.departure_hash(d["_id"]),
                            "at": int(d["departs_at"].timestamp()), "status": d["status"]}
                           for d in deps],
            "tickets": tickets, "used": used, "revoked": revoked}
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        kid, key = await self.keys.signing()
        return {"payload": text, "kid": kid, "signature": _b64(key.sign(text.encode()))}

    async def upload(self, actor: Principal, gate_id: str, scans: list[dict[str, Any]]
                     ) -> dict[str, Any]:
        """Scans a gate made offline, each with its nonce: a nonce already uploaded is skipped;
        a ticket admitted by two different scans is a conflict for the operator."""
        times = [_scan_time(scan, index) for index, scan in enumerate(scans)]  # all first
        accepted, duplicates, conflicts = 0, 0, []
        outcomes: list[dict[str, Any]] = []
        for scan, at in zip(scans, times, strict=True):
            nonce = f"offline:{gate_id}:{scan['nonce']}"
            if await self._db.gate_scans.find_one({"_id": nonce}, {"_id": 1}):
                duplicates += 1
                continue
            result = await self.scan(actor, scan["code"], gate_id=gate_id, at=at, nonce=nonce,
                                     source="offline", departure_id=scan.get("departure_id"))
            accepted += 1
            if result["outcome"] == "already_used" and scan.get("local_outcome") == "admitted":
                conflict = {"_id": nonce, "ticket_no": result["ticket_no"],
                            "first": {"gate": result["used_gate"], "at": result["used_at"]},
                            "second": {"gate": gate_id, "at": _local(at)},
                            "station_id": actor.station_id, "found_at": dt.datetime.now(dt.UTC),
                            "resolved": False}
                await self._records.conflict(conflict)
                conflicts.append({k: v for k, v in conflict.items()
                                  if k not in ("_id", "found_at")})
            outcomes.append({"nonce": scan["nonce"], "outcome": result["outcome"],
                             "ticket_no": result.get("ticket_no")})
        return {"accepted": accepted, "duplicates": duplicates, "conflicts": conflicts,
                "outcomes": outcomes}

    async def _may_see_station(self, actor: Principal, station_id: str) -> bool:
        limits = actor.station_query()
        return not limits or bool(await self._db.stations.count_documents(
            {"$and": [{"_id": station_id}, limits]}, limit=1))

    async def conflicts(self, actor: Principal) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"resolved": False}
        if actor.station_id:
            query["station_id"] = actor.station_id
        docs = await self._db.gate_conflicts.find(query).sort("found_at", -1).to_list(200)
        return [{k: v for k, v in d.items() if k not in ("_id", "found_at")} for d in docs]


"""E-tickets and gates: the passenger's dynamic code, scans, manifests, offline bundles."""

from __future__ import annotations

import io

import segno

from handlers.base import ApiHandler, api, route
from handlers.orders import BUYERS
from server.schema import DATETIME, array, integer, obj, string
from server.security.principal import AUTHORITY, GATE, OPERATOR, STATION_STAFF
from server.services.gate import OUTCOMES

GATE_STAFF = (GATE, STATION_STAFF, OPERATOR)
ROWS = array(obj({}, [], additional=True))

CODE = obj({"ticket_no": string(), "code": string(description="what the QR carries"),
            "step": integer(0), "refresh_in": {"type": "number"}, "valid_until": DATETIME,
            "pickup_code": string(description="8 digits for kiosks and windows")},
           ["ticket_no", "code", "step", "refresh_in", "pickup_code"])
SCAN = obj({"code": string(1, 400), "departure_id": string(1, 64),
            "gate_id": string(1, 64, description="which gate (default: the signed-in gate)"),
            "id_no": string(1, 40, description="ID card read at the gate (票人证一致)"),
            "id_type": string(1, 40)}, ["code"])
OUTCOME = obj({"outcome": {"type": "string", "enum": list(OUTCOMES)},
               "ticket_no": string(), "departure_id": string(),
               "seat": {"type": ["integer", "null"]}, "passenger": string(),
               "ticket_type": string(), "departs_at": DATETIME, "used_at": DATETIME,
               "used_gate": string(), "opens_at": DATETIME, "realname": string()},
              ["outcome"])
MANIFEST = obj({"departure_id": string(), "station_id": string(), "departs_at": DATETIME,
                "status": string(), "seats": integer(0), "sold": integer(0),
                "checked_in": integer(0), "children": integer(0),
                "signed_off": {"type": ["object", "null"]}, "passengers": ROWS},
               ["departure_id", "passengers", "sold", "checked_in"])
SIGN_OFF = obj({"driver_name": string(1, 40), "vehicle_plate": string(1, 16)},
               ["driver_name"])
SIGNED = obj({"at": DATETIME, "by": string(), "driver_name": string(),
              "vehicle_plate": string(), "sold": integer(0), "checked_in": integer(0),
              "children": integer(0), "no_shows": array(string())},
             ["at", "sold", "checked_in", "no_shows"])
SERVICE_DAY = string(10, 10, format="date",
                     description="YYYY-MM-DD service day; without it, the current and the "
                                 "next service day (Beijing time)")
DAY = obj({"date": SERVICE_DAY}, [])
BUNDLE_QUERY = obj({"station": string(1, 16), "date": SERVICE_DAY}, ["station"])
BUNDLE = obj({"payload": string(description="JSON text; the signature is over its UTF-8"),
              "kid": integer(0), "signature": string(description="Ed25519, base64url")},
             ["payload", "kid", "signature"])
UPLOAD = obj({"gate_id": string(1, 64), "scans": array(obj({
    "nonce": string(8, 64), "code": string(1, 400), "scanned_at": DATETIME,
    "departure_id": string(1, 64), "local_outcome": string(1, 40),
    "bundle_issued_at": {**DATETIME, "description": "issued_at of the bundle the scan was "
                                                    "judged with"}},
    ["nonce", "code", "scanned_at"]), maxItems=2000)}, ["gate_id", "scans"])
UPLOADED = obj({"accepted": integer(0), "duplicates": integer(0), "conflicts": ROWS,
                "outcomes": ROWS},
               ["accepted", "duplicates", "conflicts"])


class TicketCodeHandler(ApiHandler):
    @api("The ticket's current dynamic QR code (changes every 30 s) and pickup code",
         roles=BUYERS, response=CODE, tags=("e-tickets",),
         errors=("TICKET_NOT_FOUND", "TICKET_NOT_VALID"))
    async def get(self, ticket_no: str) -> None:
        ticket, dep = await self.services.tickets.visible(self.principal, ticket_no)
        self.set_header("Cache-Control", "no-store")
        self.write_json(await self.services.gate.code_for(ticket, dep))


class TicketCodePngHandler(ApiHandler):
    @api("The current dynamic code as a PNG QR image (for the app and H5)", roles=BUYERS,
         tags=("e-tickets",), content_type="image/png",
         errors=("TICKET_NOT_FOUND", "TICKET_NOT_VALID"))
    async def get(self, ticket_no: str) -> None:
        ticket, dep = await self.services.tickets.visible(self.principal, ticket_no)
        code = await self.services.gate.code_for(ticket, dep)
        out = io.BytesIO()
        segno.make_qr(code["code"], error="m").save(out, kind="png", scale=6, border=2)
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Refresh-In", str(code["refresh_in"]))
        self.finish(out.getvalue())


class ScanHandler(ApiHandler):
    @api("Scan a code at a gate: verify, then admit at most once", roles=(GATE,),
         body=SCAN, response=OUTCOME, tags=("gate",))
    async def post(self) -> None:
        b = self.body
        self.write_json(await self.services.gate.scan(
            self.principal, b["code"], departure_id=b.get("departure_id"),
            gate_id=b.get("gate_id", ""), id_no=b.get("id_no"),
            id_type=b.get("id_type", "resident_id")))


class ManifestHandler(ApiHandler):
    @api("Boarding manifest of a departure (passengers masked)",
         roles=(*GATE_STAFF, AUTHORITY), response=MANIFEST, tags=("gate",),
         errors=("DEPARTURE_NOT_FOUND",))
    async def get(self, departure_id: str) -> None:
        self.write_json(await self.services.gate.manifest(self.principal, departure_id))


class SignOffHandler(ApiHandler):
    @api("Sign off the manifest at departure (发车签字): counts kept, departure departed",
         roles=GATE_STAFF, body=SIGN_OFF, response=SIGNED, status=201, tags=("gate",),
         errors=("DEPARTURE_NOT_FOUND", "ALREADY_SIGNED_OFF"))
    async def post(self, departure_id: str) -> None:
        result = await self.services.gate.sign_off(
            self.principal, departure_id, self.body["driver_name"],
            self.body.get("vehicle_plate", ""))
        self.write_json(result)


class GateDeparturesHandler(ApiHandler):
    @api("The signed-in gate's station departures of a day; without one, those it can still "
         "board today and tomorrow", roles=GATE_STAFF, query=DAY, errors=("INVALID_QUERY",),
         tags=("gate",))
    async def get(self) -> None:
        self.write_json({"departures": await self.services.gate.departures(
            self.principal, self.query.get("date"))})


class BundleHandler(ApiHandler):
    @api("Offline bundle: keys, valid tickets and revocations of a station's day, signed",
         roles=GATE_STAFF, query=BUNDLE_QUERY, response=BUNDLE, tags=("gate",),
         errors=("OUT_OF_SCOPE", "INVALID_QUERY"))
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.write_json(await self.services.gate.bundle(self.principal, self.query["station"],
                                                        self.query.get("date")))


class OfflineScansHandler(ApiHandler):
    @api("Upload scans made offline (each nonce counts once; double admissions reported)",
         roles=(GATE,), body=UPLOAD, response=UPLOADED, tags=("gate",),
         errors=("INVALID_VALUE", "OFFLINE_SCAN_OUT_OF_BUNDLE"),
         description="Every scanned_at must lie within a bundle's validity: not in the "
                     "future, not older than a bundle lives (30 h), and inside the validity "
                     "of the bundle named by bundle_issued_at; otherwise the whole upload is "
                     "refused (422) and nothing of it is applied.")
    async def post(self) -> None:
        self.write_json(await self.services.gate.upload(self.principal, self.body["gate_id"],
                                                        self.body["scans"]))


class ConflictsHandler(ApiHandler):
    @api("Tickets admitted by two gates while offline, for an operator to look at",
         roles=(STATION_STAFF, OPERATOR), tags=("gate",))
    async def get(self) -> None:
        self.write_json({"conflicts": await self.services.gate.conflicts(self.principal)})


class KeyRotateHandler(ApiHandler):
    @api("Rotate the ticket signing key (the old one verifies two more days)",
         roles=(OPERATOR,), tags=("gate",), status=201)
    async def post(self) -> None:
        kid = await self.services.gate.rotate_key(self.principal)
        self.write_json({"kid": kid, "keys": await self.services.gate.keys.public()})


default_handlers = [
    route("/api/v1/tickets/{ticket_no}/qr", TicketCodeHandler),
    route("/api/v1/tickets/{ticket_no}/qr.png", TicketCodePngHandler),
    route("/api/v1/gate/scan", ScanHandler),
    route("/api/v1/gate/departures", GateDeparturesHandler),
    route("/api/v1/gate/departures/{departure_id}/manifest", ManifestHandler),
    route("/api/v1/gate/departures/{departure_id}/sign-off", SignOffHandler),
    route("/api/v1/gate/bundle", BundleHandler),
    route("/api/v1/gate/offline-scans", OfflineScansHandler),
    route("/api/v1/gate/conflicts", ConflictsHandler),
    route("/api/v1/gate/keys/rotate", KeyRotateHandler),
]

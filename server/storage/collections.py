"""The MongoDB data model: every collection with its JSON-schema validator and its indexes.

Names follow the glossary (SPEC §1). Money is integer fen (the validators reject a double),
times are BSON dates in UTC, admin divisions are GB/T 2260 six-digit codes. Validators state
what every document must have; fields later capabilities add are allowed (no
``additionalProperties: false``) so a rolling deploy never rejects a newer writer's document.
:func:`ensure_schema` creates or updates all of it idempotently at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, OperationFailure

from server.security.principal import STAFF_ROLES
from server.vocabulary import ANONYMIZED, ID_TYPES, TICKET_TYPES

log = logging.getLogger(__name__)

# --- reusable field schemas -------------------------------------------------------------------
STR = {"bsonType": "string"}
NONEMPTY = {"bsonType": "string", "minLength": 1}
DATE = {"bsonType": "date"}
BOOL = {"bsonType": "bool"}
INT = {"bsonType": ["int", "long"]}
FEN = {"bsonType": ["int", "long"], "minimum": 0}  # money: integer fen, never a double
DIVISION = {"bsonType": "string", "pattern": "^[1-9][0-9]{5}$"}  # GB/T 2260
LOCAL_DATE = {"bsonType": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
LOCAL_TIME = {"bsonType": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$"}
GEO_POINT = {
    "bsonType": "object", "required": ["type", "coordinates"],
    "properties": {"type": {"enum": ["Point"]},
                   "coordinates": {"bsonType": "array", "minItems": 2, "maxItems": 2,
                                   "items": {"bsonType": ["double", "int"]}}},
}
# a bus's seats: 核定载客数 is at most 80 (the vehicles' limit); a seat number is one byte of
# the signed ticket code
SEAT_COUNT = {"bsonType": "int", "minimum": 1, "maximum": 80}
ORDER_STATUSES = ["pending_payment", "waitlisted", "paid", "issued", "completed", "cancelled",
                  "expired", "refunding", "refunded", "failed"]
TICKET_STATUSES = ["held", "issued", "picked_up", "checked_in", "refunded", "voided", "changed",
                   "released", "refunding", "voiding", "changing"]
DEPARTURE_STATUSES = ["on_sale", "stopped", "departed", "cancelled"]


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"$jsonSchema": {"bsonType": "object", "required": required,
                            "properties": properties}}


@dataclass(frozen=True)
class CollectionSpec:
    """One collection: its validator and its indexes."""

    name: str
    validator: dict[str, Any] | None
    indexes: list[IndexModel] = field(default_factory=list)


def _ix(keys: list[tuple[str, Any]] | str, name: str, **kw: Any) -> IndexModel:
    if isinstance(keys, str):
        keys = [(keys, ASCENDING)]
    return IndexModel(keys, name=name, **kw)


COLLECTIONS: list[CollectionSpec] = [
    CollectionSpec("stations", _obj(
        ["code", "name", "grade", "division", "city", "location", "system", "status"],
        code=NONEMPTY, name=NONEMPTY, grade={"bsonType": "int", "minimum": 1, "maximum": 5},
        division=DIVISION, city=NONEMPTY, city_division=DIVISION, address=STR,
        location=GEO_POINT, name_pinyin=STR, name_initials=STR,
        system={"bsonType": "object", "required": ["vendor"],
                "properties": {"vendor": {"enum": ["native", "rest", "xml"]}}},
        status={"enum": ["active", "suspended", "closed", "withdrawn"]}), [
        _ix("code", "code_unique", unique=True),
        _ix([("division", ASCENDING)], "division"),
        _ix([("city", ASCENDING)], "city"),
        _ix([("name_pinyin", ASCENDING)], "name_pinyin"),
        _ix([("name_initials", ASCENDING)], "name_initials"),
        # the version stated explicitly: SecantusDB otherwise refuses to re-create the index
        # (docs/secantusdb.md); on MongoDB 3 is the default anyway
        _ix([("location", "2dsphere")], "location_2dsphere", **{"2dsphereIndexVersion": 3}),
    ]),
    CollectionSpec("carriers", _obj(
        ["code", "name", "division", "status"],
        code=NONEMPTY, name=NONEMPTY, division=DIVISION, licence_no=STR,
        status={"enum": ["active", "suspended", "withdrawn"]}), [
        _ix("code", "code_unique", unique=True),
    ]),
    CollectionSpec("vehicles", _obj(
        ["plate", "carrier_id", "seats", "grade", "status"],
        plate=NONEMPTY, carrier_id=NONEMPTY, model=STR,
        seats={"bsonType": "int", "minimum": 5, "maximum": 80},
        grade={"enum": ["high_1", "high_2", "high_3", "mid", "normal"]},
        status={"enum": ["active", "maintenance", "retired", "suspended", "withdrawn"]}), [
        _ix("plate", "plate_unique", unique=True),
        _ix([("carrier_id", ASCENDING)], "carrier"),
    ]),
    CollectionSpec("drivers", _obj(
        ["name", "licence_no", "carrier_id", "status"],
        name=NONEMPTY, licence_no=NONEMPTY, carrier_id=NONEMPTY, licence_class=STR,
        status={"enum": ["active", "suspended", "withdrawn"]}), [
        _ix("licence_no", "licence_unique", unique=True),
        _ix([("carrier_id", ASCENDING)], "carrier"),
    ]),
    CollectionSpec("routes", _obj(
        ["code", "name", "origin_station_id", "destination_station_id", "distance_km",
         "grade", "type", "status"],
        code=NONEMPTY, name=NONEMPTY, origin_station_id=NONEMPTY,
        destination_station_id=NONEMPTY,
        distance_km={"bsonType": "int", "minimum": 1},
        highway_km={"bsonType": "int", "minimum": 0},
        grade={"enum": ["class_1", "class_2", "class_3", "class_4"]},
        type={"enum": ["county", "intercity", "interprovincial", "rural"]},
        carrier_ids={"bsonType": "array", "items": STR},
        status={"enum": ["active", "suspended", "withdrawn"]}), [
        _ix("code", "code_unique", unique=True),
        _ix([("origin_station_id", ASCENDING)], "origin"),
        _ix([("destination_station_id", ASCENDING)], "destination"),
    ]),
    CollectionSpec("stops", _obj(
        ["route_id", "seq", "name", "city", "division", "distance_km"],
        route_id=NONEMPTY, seq={"bsonType": "int", "minimum": 0}, station_id=STR,
        name=NONEMPTY, city=NONEMPTY, division=DIVISION,
        distance_km={"bsonType": "int", "minimum": 0},
        boarding=BOOL, alighting=BOOL), [
        _ix([("route_id", ASCENDING), ("seq", ASCENDING)], "route_seq_unique", unique=True),
        _ix([("city", ASCENDING)], "city"),
        _ix([("station_id", ASCENDING)], "station"),
    ]),
    CollectionSpec("schedules", _obj(
        ["code", "route_id", "station_id", "carrier_id", "departs_at_local", "nature", "type",
         "seats", "status"],
        code=NONEMPTY, route_id=NONEMPTY, station_id=NONEMPTY, carrier_id=NONEMPTY,
        departs_at_local=LOCAL_TIME, nature={"enum": ["regular", "extra", "seasonal"]},
        type={"enum": ["direct", "normal", "express", "sleeper"]},
        seats=SEAT_COUNT,
        status={"enum": ["active", "suspended", "withdrawn"]}), [
        _ix("code", "code_unique", unique=True),
        _ix([("route_id", ASCENDING)], "route"),
        _ix([("station_id", ASCENDING)], "station"),
    ]),
    CollectionSpec("departures", _obj(
        ["schedule_id", "route_id", "station_id", "carrier_id", "service_date", "departs_at",
         "seats", "status", "inventory"],
        schedule_id=NONEMPTY, route_id=NONEMPTY, station_id=NONEMPTY, carrier_id=NONEMPTY,
        vehicle_id=STR, driver_ids={"bsonType": "array", "items": STR},
        service_date=LOCAL_DATE, departs_at=DATE,
        seats=SEAT_COUNT,
        status={"enum": DEPARTURE_STATUSES},
        inventory={"enum": ["native", "proxied"]}), [
        # one regular run of a schedule a day (run absent), and its extra buses (run 1, 2…)
        _ix([("schedule_id", ASCENDING), ("service_date", ASCENDING), ("run", ASCENDING)],
            "schedule_date_run_unique", unique=True),
        _ix([("station_id", ASCENDING), ("service_date", ASCENDING), ("departs_at", ASCENDING)],
            "station_date_time"),
        _ix([("route_id", ASCENDING), ("service_date", ASCENDING)], "route_date"),
        _ix([("service_date", ASCENDING), ("status", ASCENDING)], "date_status"),
        # changes a sync stored but has not told passengers of yet (few, short-lived)
        _ix("unannounced.kind", "unannounced", sparse=True),
        # the flow statistics re-read changed departures by these
        _ix("status_at", "status_at", sparse=True),
        _ix("synced_at", "synced_at", sparse=True),
    ]),
    CollectionSpec("fares", _obj(
        ["route_id", "from_seq", "to_seq", "guide_price", "prices", "station_fee",
         "effective_from"],
        route_id=NONEMPTY, from_seq={"bsonType": "int", "minimum": 0},
        to_seq={"bsonType": "int", "minimum": 1}, guide_price=FEN, station_fee=FEN,
        prices={"bsonType": "object", "required": ["adult"],
                "properties": {t: FEN for t in TICKET_TYPES}},
        effective_from=DATE), [
        _ix([("route_id", ASCENDING), ("from_seq", ASCENDING), ("to_seq", ASCENDING),
             ("effective_from", DESCENDING)], "route_segment_effective_unique", unique=True),
    ]),
    CollectionSpec("members", _obj(
        ["created_at", "status"],
        openid=STR, phone_enc=STR, phone_index=STR, phone_masked=STR, nickname=STR,
        created_at=DATE, status={"enum": ["active", "disabled", "closed"]}), [
        _ix("openid", "openid_unique", unique=True,
            partialFilterExpression={"openid": {"$type": "string"}}),
        _ix("phone_index", "phone_index_unique", unique=True,
            partialFilterExpression={"phone_index": {"$type": "string"}}),
        _ix([("status", ASCENDING), ("last_login_at", ASCENDING)], "status_last_login"),
    ]),
    CollectionSpec("passengers", _obj(
        ["member_id", "name", "id_type", "id_no_enc", "id_no_index", "id_no_masked"],
        member_id=NONEMPTY, name=NONEMPTY, id_type={"enum": list(ID_TYPES)},
        id_no_enc=NONEMPTY, id_no_index=NONEMPTY, id_no_masked=NONEMPTY,
        phone_enc=STR, ticket_type={"enum": list(TICKET_TYPES)}), [
        _ix([("member_id", ASCENDING), ("id_type", ASCENDING), ("id_no_index", ASCENDING)],
            "member_document_unique", unique=True),
    ]),
    CollectionSpec("orders", _obj(
        ["order_no", "channel", "departure_id", "status", "amount", "created_at"],
        order_no=NONEMPTY, member_id=STR, channel=NONEMPTY, departure_id=NONEMPTY,
        status={"enum": ORDER_STATUSES}, amount=FEN, expires_at=DATE, created_at=DATE,
        contact_phone_enc=STR, history={"bsonType": "array"}, kind={"enum": ["waitlist"]},
        waitlist={"bsonType": "object", "required": ["departure_ids", "deadline",
                                                     "passengers"]}), [
        _ix("order_no", "order_no_unique", unique=True),
        _ix([("status", ASCENDING), ("waitlist.queued_at", ASCENDING),
             ("order_no", ASCENDING)], "waitlist_queue",
            partialFilterExpression={"kind": "waitlist"}),
        _ix([("member_id", ASCENDING), ("created_at", DESCENDING)], "member_created"),
        _ix([("status", ASCENDING), ("expires_at", ASCENDING)], "status_expiry"),
        _ix([("departure_id", ASCENDING)], "departure"),
        _ix("contact_phone_index", "contact_phone",
            partialFilterExpression={"contact_phone_index": {"$type": "string"}}),
        _ix([("partner_id", ASCENDING), ("created_at", DESCENDING)], "partner_created",
            partialFilterExpression={"partner_id": {"$type": "string"}}),
    ]),
    CollectionSpec("tickets", _obj(
        ["ticket_no", "order_no", "departure_id", "ticket_type", "price", "status",
         "passenger"],
        ticket_no=NONEMPTY, order_no=NONEMPTY, departure_id=NONEMPTY,
        ticket_type={"enum": list(TICKET_TYPES)}, price=FEN, status={"enum": TICKET_STATUSES},
        seat={"bsonType": ["int", "null"]}, active=BOOL,
        # who travelled: found by blind index until the retention job anonymizes it
        passenger={"bsonType": "object", "required": ["name", "id_type", "id_no_masked"],
                   "anyOf": [{"required": ["id_no_index"]},
                             {"properties": {"name": {"enum": [ANONYMIZED]}}}]}), [
        _ix("ticket_no", "ticket_no_unique", unique=True),
        _ix([("order_no", ASCENDING)], "order"),
        # real name: one person, one seat per departure, among tickets still valid
        _ix([("departure_id", ASCENDING), ("passenger.id_no_index", ASCENDING)],
            "one_person_one_seat", unique=True, partialFilterExpression={"active": True}),
        _ix([("departure_id", ASCENDING), ("status", ASCENDING)], "departure_status"),
        _ix("pickup_code", "pickup_code", sparse=True),
        _ix([("issued_at", ASCENDING)], "issued_at", sparse=True),  # the ledger reads by it
        _ix([("refund.at", ASCENDING)], "refund_at", sparse=True),
    ]),
    CollectionSpec("payments", _obj(
        ["out_trade_no", "order_no", "provider", "amount", "status", "created_at"],
        out_trade_no=NONEMPTY, order_no=NONEMPTY, provider=NONEMPTY, amount=FEN,
        status={"enum": ["created", "pending", "paid", "closed", "failed", "refunding",
                         "refunded"]},
        created_at=DATE), [
        _ix("out_trade_no", "out_trade_no_unique", unique=True),
        _ix([("order_no", ASCENDING)], "order"),
        _ix([("status", ASCENDING), ("created_at", ASCENDING)], "status_created"),
        _ix([("status", ASCENDING), ("started_at", ASCENDING)], "status_started"),
    ]),
    CollectionSpec("channels", _obj(
        ["code", "name", "kind", "enabled", "payment_methods"],
        code=NONEMPTY, name=NONEMPTY,
        kind={"enum": ["miniapp", "app", "web", "agent", "kiosk", "phone", "partner",
                       "window"]},
        enabled=BOOL, payment_methods={"bsonType": "array", "items": STR}), [
        _ix("code", "code_unique", unique=True),
    ]),
    CollectionSpec("outlets", _obj(
        ["code", "name", "division", "credit_limit", "commission_bp", "status"],
        code=NONEMPTY, name=NONEMPTY, division=DIVISION, credit_limit=FEN,
        commission_bp={"bsonType": "int", "minimum": 0, "maximum": 10000},
        status={"enum": ["active", "suspended"]}), [
        _ix("code", "code_unique", unique=True),
    ]),
    CollectionSpec("partners", _obj(
        ["code", "name", "status", "credit_limit", "created_at"],
        code=NONEMPTY, name=NONEMPTY, credit_limit=FEN, created_at=DATE,
        status={"enum": ["active", "suspended"]}), [
        _ix("code", "code_unique", unique=True),
    ]),
    CollectionSpec("partner_keys", _obj(
        ["partner_id", "secret_enc", "status", "created_at"],
        partner_id=NONEMPTY, secret_enc=NONEMPTY, created_at=DATE,
        status={"enum": ["active", "revoked"]}), [
        _ix("partner_id", "partner"),
    ]),
    CollectionSpec("staff", _obj(
        ["username", "password_hash", "role", "status", "created_at"],
        username={"bsonType": "string", "pattern": "^[a-z][a-z0-9_.-]{2,31}$"},
        password_hash=NONEMPTY, name=STR,
        role={"enum": list(STAFF_ROLES)},
        region=DIVISION, station_id=STR, outlet_id=STR,
        status={"enum": ["active", "disabled"]}, created_at=DATE), [
        _ix("username", "username_unique", unique=True),
    ]),
    CollectionSpec("refresh_tokens", _obj(
        ["token_hash", "family", "subject", "expires_at", "created_at"],
        token_hash=NONEMPTY, family=NONEMPTY, subject={"bsonType": "object"},
        expires_at=DATE, created_at=DATE, used_at={"bsonType": ["date", "null"]},
        revoked_at={"bsonType": ["date", "null"]}), [
        _ix("token_hash", "token_hash_unique", unique=True),
        _ix([("family", ASCENDING)], "family"),
        _ix("expires_at", "expiry_ttl", expireAfterSeconds=0),
        _ix([("subject.id", ASCENDING), ("created_at", ASCENDING)], "subject_created"),
    ]),
    CollectionSpec("audit", _obj(
        ["at", "actor", "action"],
        at=DATE, action=NONEMPTY, outcome={"enum": ["ok", "denied", "failed"]},
        actor={"bsonType": "object", "required": ["kind"]}, target=STR, request_id=STR), [
        _ix([("at", DESCENDING)], "at"),
        _ix([("actor.id", ASCENDING), ("at", DESCENDING)], "actor_at"),
        _ix([("action", ASCENDING), ("at", DESCENDING)], "action_at"),
    ]),
    CollectionSpec("seat_holds", _obj(
        ["departure_id", "channel", "from_seq", "to_seq", "seats", "status", "expires_at"],
        departure_id=NONEMPTY, channel=NONEMPTY, from_seq={"bsonType": "int", "minimum": 0},
        to_seq={"bsonType": "int", "minimum": 1},
        seats={"bsonType": "array", "minItems": 1,
               "items": {"bsonType": "object", "required": ["seat"],
                         "properties": {"seat": {"bsonType": "int", "minimum": 1}}}},
        status={"enum": ["held", "selling", "sold", "released", "returned"]},
        expires_at=DATE), [
        _ix([("departure_id", ASCENDING), ("status", ASCENDING)], "departure_status"),
        _ix([("status", ASCENDING), ("expires_at", ASCENDING)], "status_expiry"),
    ]),
    # who a seat hold belongs to: the order written with it, or the sweeper that released it
    # because its process died before the order was written (the unique _id decides)
    CollectionSpec("hold_claims", _obj(
        ["owner", "departure_id", "at"],
        owner={"enum": ["order", "sweeper"]}, departure_id=NONEMPTY, at=DATE), [
        _ix([("at", ASCENDING)], "at_ttl", expireAfterSeconds=2 * 86400),
    ]),
    CollectionSpec("ticket_sources", _obj(
        ["scope", "allotments", "updated_at"],
        scope={"enum": ["departure", "schedule"]},
        allotments={"bsonType": "object", "additionalProperties": {"bsonType": "int",
                                                                    "minimum": 0}},
        caps={"bsonType": "object"}, closed_channels={"bsonType": "array", "items": STR},
        release_before_minutes={"bsonType": "int", "minimum": 0}, updated_at=DATE), []),
    CollectionSpec("station_calls", _obj(
        ["station_id", "vendor", "operation", "outcome", "latency_ms", "at"],
        station_id=NONEMPTY, vendor=NONEMPTY, operation=NONEMPTY,
        outcome={"enum": ["ok", "refused", "error", "timeout", "unreachable",
                          "bad_response"]},
        latency_ms={"bsonType": ["double", "int", "long"]}, at=DATE), [
        _ix([("station_id", ASCENDING), ("at", DESCENDING)], "station_at"),
        _ix([("at", ASCENDING)], "at_ttl", expireAfterSeconds=30 * 86400),
    ]),
    CollectionSpec("sync_runs", _obj(
        ["station_id", "kind", "started_at", "outcome"],
        station_id=NONEMPTY, kind={"enum": ["full", "incremental"]}, started_at=DATE,
        outcome={"enum": ["ok", "failed", "running"]}), [
        _ix([("station_id", ASCENDING), ("started_at", DESCENDING)], "station_started"),
    ]),
    CollectionSpec("money_movements", _obj(
        ["kind", "provider", "order_no", "amount", "at"],
        kind={"enum": ["payment", "refund", "deposit"]},
        provider=NONEMPTY, order_no=NONEMPTY, amount=FEN, at=DATE), [
        _ix([("order_no", ASCENDING)], "order"),
        _ix([("at", ASCENDING)], "at"),
    ]),
    # requested → sending (a worker has it) → processing (at the provider, awaiting its
    # outcome) → done; attention: closed, abnormal or refused at the provider (finance acts)
    CollectionSpec("refund_requests", _obj(
        ["order_no", "amount", "status", "created_at"], order_no=NONEMPTY, amount=FEN,
        status={"enum": ["requested", "sending", "processing", "done", "failed",
                         "attention"]}, created_at=DATE), [
        _ix([("status", ASCENDING), ("created_at", ASCENDING)], "status_created"),
        _ix("out_refund_no", "out_refund_no", sparse=True),
    ]),
    CollectionSpec("alerts", _obj(
        ["kind", "message", "status", "created_at", "last_at"], kind=NONEMPTY,
        message=NONEMPTY, status={"enum": ["open", "closed"]}, created_at=DATE,
        last_at=DATE), [
        _ix([("status", ASCENDING), ("last_at", DESCENDING)], "status_last"),
    ]),
    CollectionSpec("notices", _obj(
        ["kind", "order_no", "status", "attempts", "next_at", "created_at"],
        kind={"enum": ["ticket_issued", "refund_done", "departure_changed",
                       "payment_expiring", "pay_link"]},
        order_no=NONEMPTY, status={"enum": ["pending", "sending", "sent", "failed"]},
        attempts={"bsonType": "int", "minimum": 0}, next_at=DATE, created_at=DATE), [
        _ix([("status", ASCENDING), ("next_at", ASCENDING)], "status_next"),
        _ix([("order_no", ASCENDING)], "order"),
    ]),
    CollectionSpec("gate_keys", _obj(["alg", "public", "private_enc", "created_at"],
                                     alg={"enum": ["Ed25519"]}, public=NONEMPTY,
                                     private_enc=NONEMPTY, created_at=DATE), [
        _ix([("created_at", DESCENDING)], "created"),
    ]),
    CollectionSpec("gate_scans", _obj(["at", "gate", "outcome", "source"], at=DATE,
                                      gate=NONEMPTY, outcome=NONEMPTY,
                                      source={"enum": ["online", "offline"]}), [
        _ix([("ticket_no", ASCENDING), ("at", ASCENDING)], "ticket_at"),
        _ix([("station_id", ASCENDING), ("at", DESCENDING)], "station_at"),
    ]),
    CollectionSpec("departure_signoffs", _obj(["at", "by", "driver_name", "sold",
                                               "checked_in"], at=DATE, by=NONEMPTY,
                                              driver_name=NONEMPTY), [
        _ix([("station_id", ASCENDING), ("at", DESCENDING)], "station_at"),
    ]),
    CollectionSpec("gate_conflicts", None, [
        _ix([("station_id", ASCENDING), ("resolved", ASCENDING), ("found_at", DESCENDING)],
            "station_open"),
    ]),
    CollectionSpec("rules", _obj(["effective_from", "rules"], effective_from=DATE,
                                 rules={"bsonType": "object"}), [
        _ix([("effective_from", DESCENDING)], "effective_from"),
    ]),
    CollectionSpec("webhooks", _obj(
        ["partner_id", "event", "data", "status", "attempts", "next_at", "created_at"],
        partner_id=NONEMPTY, event=NONEMPTY, data={"bsonType": "object"},
        status={"enum": ["pending", "sending", "delivered", "failed"]}, attempts=INT,
        next_at=DATE, created_at=DATE), [
        _ix([("status", ASCENDING), ("next_at", ASCENDING)], "status_due"),
        _ix([("partner_id", ASCENDING), ("created_at", DESCENDING)], "partner_created"),
    ]),
    CollectionSpec("clearing_rules", _obj(
        ["lines", "status", "created_at"], lines={"bsonType": "array", "minItems": 1},
        status={"enum": ["draft", "published"]}, created_at=DATE), [
        _ix([("status", ASCENDING), ("effective_from", ASCENDING)], "status_effective"),
    ]),
    # the journal: postings in signed fen (debit positive) that sum to zero, never updated
    CollectionSpec("ledger_entries", _obj(
        ["kind", "postings", "at", "booked_on", "event_at"],
        kind={"enum": ["payment", "refund", "deposit", "sale", "change", "ticket_refund",
                       "ticket_void", "cancellation_refund", "payout", "adjustment"]},
        postings={"bsonType": "array", "minItems": 1, "items": {
            "bsonType": "object", "required": ["account", "amount"],
            "properties": {"account": NONEMPTY, "amount": INT}}},
        at=DATE, booked_on=LOCAL_DATE, event_at=DATE), [
        _ix([("postings.account", ASCENDING), ("booked_on", ASCENDING)], "account_booked"),
        _ix([("kind", ASCENDING), ("event_at", ASCENDING)], "kind_event"),
        _ix([("at", ASCENDING)], "at"),
    ]),
    CollectionSpec("ledger_accounts", _obj(["balance"], balance=INT), []),
    CollectionSpec("ledger_cursors", _obj(["at"], at=DATE), []),
    CollectionSpec("invoices", _obj(
        ["order_no", "kind", "status", "buyer", "lines", "total", "requested_at"],
        order_no=NONEMPTY, kind={"enum": ["blue", "red"]},
        status={"enum": ["requested", "issued", "void"]}, total={"bsonType": ["int", "long"]},
        requested_at=DATE, issued_at=DATE, invoice_no=STR), [
        _ix("order_no", "current_blue", unique=True,
            partialFilterExpression={"current": True}),
        _ix([("order_no", ASCENDING), ("requested_at", ASCENDING)], "order_requested"),
        _ix([("status", ASCENDING), ("requested_at", ASCENDING)], "status_requested"),
        _ix([("requested_at", DESCENDING)], "requested"),
    ]),
    CollectionSpec("invoice_cursors", _obj(["at"], at=DATE), []),
    CollectionSpec("exports", _obj(
        ["kind", "format", "status", "requested_by", "created_at", "expires_at"],
        kind=NONEMPTY, format={"enum": ["csv", "xlsx"]},
        status={"enum": ["running", "done", "failed"]},
        requested_by={"bsonType": "object", "required": ["id"]}, created_at=DATE,
        expires_at=DATE), [
        _ix([("requested_by.id", ASCENDING), ("created_at", DESCENDING)], "requester_created"),
        _ix("expires_at", "expiry_ttl", expireAfterSeconds=0),
    ]),
    CollectionSpec("export_chunks", _obj(
        ["export_id", "n", "data", "expires_at"], export_id=NONEMPTY,
        n={"bsonType": "int", "minimum": 0}, data={"bsonType": "binData"}, expires_at=DATE), [
        _ix([("export_id", ASCENDING), ("n", ASCENDING)], "export_n"),
        _ix("expires_at", "expiry_ttl", expireAfterSeconds=0),
    ]),
    CollectionSpec("settlement_entities", _obj(
        ["updated_at"], cycle_days={"bsonType": "int", "minimum": 0, "maximum": 7},
        updated_at=DATE), []),
    CollectionSpec("settlement_batches", _obj(
        ["through_date", "status", "created_at"], through_date=LOCAL_DATE,
        status={"enum": ["running", "done"]}, created_at=DATE), [
        _ix([("through_date", DESCENDING)], "through_date"),
    ]),
    CollectionSpec("reconciliation_runs", _obj(
        ["date", "source", "created_at", "open_differences"], date=LOCAL_DATE,
        source=NONEMPTY, created_at=DATE, open_differences={"bsonType": "int", "minimum": 0}), [
        _ix([("date", ASCENDING), ("open_differences", ASCENDING)], "date_open"),
        _ix([("created_at", DESCENDING)], "created"),
    ]),
    CollectionSpec("reconciliation_differences", _obj(
        ["run_id", "class", "kind", "ref", "status"], run_id=NONEMPTY,
        **{"class": {"enum": ["only_ours", "only_theirs", "amount_differs", "status_differs"]}},
        kind={"enum": ["payment", "refund", "sale", "return"]}, ref=NONEMPTY,
        status={"enum": ["open", "resolved"]}), [
        _ix([("run_id", ASCENDING), ("seq", ASCENDING)], "run_seq"),
    ]),
    CollectionSpec("flow_departures", _obj(
        ["day", "route_id", "carrier_id", "station_id", "scheduled", "passengers"],
        day=LOCAL_DATE, route_id=NONEMPTY, station_id=NONEMPTY, scheduled=INT,
        passengers={"bsonType": "int", "minimum": 0}), [
        _ix([("day", ASCENDING), ("route_id", ASCENDING), ("carrier_id", ASCENDING)],
            "day_route_carrier"),
    ]),
    CollectionSpec("flow_days", _obj(
        ["source", "day", "month", "route_id", "carrier_id", "station_id", "region"],
        source={"enum": ["live", "history"]}, day=LOCAL_DATE,
        month={"bsonType": "string", "pattern": r"^\d{4}-\d{2}$"}, route_id=NONEMPTY,
        station_id=NONEMPTY, region=STR), [
        # (each index costs the history load dearly on the embedded store: two only)
        _ix([("day", ASCENDING), ("route_id", ASCENDING)], "day_route"),
        _ix([("month", ASCENDING), ("route_id", ASCENDING)], "month_route"),
    ]),
    CollectionSpec("flow_months", _obj(
        ["month", "route_id", "carrier_id", "station_id", "region"],
        month={"bsonType": "string", "pattern": r"^\d{4}-\d{2}$"}, route_id=NONEMPTY,
        station_id=NONEMPTY, region=STR), [
        _ix([("month", ASCENDING), ("route_id", ASCENDING)], "month_route"),
    ]),
    CollectionSpec("flow_cursors", _obj(["at"], at=DATE), []),
    CollectionSpec("retention_cursors", _obj(["at"], at=DATE), []),
    CollectionSpec("flow_warnings", _obj(
        ["kind", "ref", "date", "level", "region"], kind={"enum": ["station", "route"]},
        ref=NONEMPTY, date=LOCAL_DATE, level={"enum": ["peak", "over_capacity"]},
        region=STR), [
        _ix([("date", ASCENDING)], "date"),
    ]),
    CollectionSpec("ministry_exports", _obj(
        ["date", "status", "revision", "created_at"], date=LOCAL_DATE,
        status={"enum": ["building", "failed", "acknowledged", "mismatch"]},
        revision={"bsonType": "int", "minimum": 1}, created_at=DATE), [
        _ix([("date", DESCENDING)], "date"),
    ]),
    CollectionSpec("ministry_cursors", _obj(["at"], at=DATE), []),
    CollectionSpec("yunzheng_pulls", _obj(["at"], at=DATE), [
        _ix([("at", DESCENDING)], "at"),
    ]),
    CollectionSpec("idempotency", None, [
        _ix([("scope", ASCENDING), ("key", ASCENDING)], "scope_key_unique", unique=True),
        _ix("expires_at", "expiry_ttl", expireAfterSeconds=0),
        _ix([("subject.id", ASCENDING), ("created_at", ASCENDING)], "subject_created"),
    ]),
    CollectionSpec("meta", None, []),
]


# indexes an earlier version created, dropped at start (their names are never reused)
RETIRED_INDEXES: dict[str, tuple[str, ...]] = {
    "departures": ("schedule_date_unique",),  # extra buses share a schedule's day
}


async def ensure_schema(db: AsyncDatabase[Any]) -> None:
    """Create missing collections, bring validators up to date, create indexes (idempotent).

    Safe to run from several processes at once: a collection created by a sibling in the
    meantime is not an error, and index creation with the same definition is a no-op.
    """
    existing = set(await db.list_collection_names())
    for spec in COLLECTIONS:
        if spec.name not in existing:
            try:
                if spec.validator:
                    await db.create_collection(spec.name, validator=spec.validator,
                                               validationLevel="strict")
                else:
                    await db.create_collection(spec.name)
            except (CollectionInvalid, OperationFailure) as exc:
                if "already exists" not in str(exc):
                    raise
        elif spec.validator:
            await db.command("collMod", spec.name, validator=spec.validator,
                             validationLevel="strict")
        for name in RETIRED_INDEXES.get(spec.name, ()):
            if name in await db[spec.name].index_information():
                await db[spec.name].drop_index(name)
        if spec.indexes:
            await db[spec.name].create_indexes(spec.indexes)
    log.info("schema ensured", extra={"fields": {"collections": len(COLLECTIONS)}})

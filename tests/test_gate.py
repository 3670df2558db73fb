"""E-tickets and gates (C6) over real HTTP: signed dynamic codes, admit-once scans through two
server processes, manifests, offline bundles and uploads."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from server.clock import LOCAL_TZ
from server.security import ticketcode
from tests.booking_support import issued_order, member, person
from tests.inventory_support import make_departure
from tests.reliability import record
from tests.support import ApiClient, KeyunProcess, another_process

GATE_STATION = "440111001"  # the demo gate user's station


@pytest.fixture(scope="module")
def other(keyun: KeyunProcess, workdir: Path) -> Iterator[KeyunProcess]:
    with another_process(keyun, workdir, "test_gate-2") as server:
        yield server


async def boarding(api: ApiClient, db, services, *, passengers: int = 1,
                   departs_in: dt.timedelta = dt.timedelta(minutes=45),
                   station: str = GATE_STATION) -> tuple[str, str, dict[str, Any]]:
    """A member with an issued order on a fresh departure of ``station``."""
    dep_id = await make_departure(db, seats=8, stops=2, departs_in=departs_in,
                                  station_id=station)
    token = await member(api)
    people = [person(f"乘客{i}") for i in range(passengers)]
    order = await issued_order(api, services, token, dep_id, people)
    order["people"] = people
    return token, dep_id, order


async def qr(api: ApiClient, token: str, ticket_no: str) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/tickets/{ticket_no}/qr", token=token)
    assert resp.status == 200, resp.text
    return resp.body  # type: ignore[no-any-return]


async def gate_token(api: ApiClient) -> str:
    return str((await api.login("gate"))["token"])


async def scan(api: ApiClient, token: str, code: str, **extra: Any) -> dict[str, Any]:
    resp = await api.post("/api/v1/gate/scan", {"code": code, **extra}, token=token)
    assert resp.status == 200, resp.text
    return resp.body  # type: ignore[no-any-return]


@pytest.mark.gen_test(timeout=60)
async def test_the_passenger_gets_a_rotating_signed_code_a_png_and_a_pickup_code(
        api, db, services) -> None:
    token, _, order = await boarding(api, db, services)
    ticket_no = order["tickets"][0]["ticket_no"]
    first = await qr(api, token, ticket_no)
    assert first["code"].startswith("KY1:") and len(first["code"]) < 150
    assert 0 < first["refresh_in"] <= 30
    again = await qr(api, token, ticket_no)
    assert again["pickup_code"] == first["pickup_code"] and len(first["pickup_code"]) == 8
    # nothing personal inside: ticket, departure hash, seat, times, key
    fields, _, _ = ticketcode.parse(first["code"])
    assert fields.ticket_no == ticket_no and fields.seat == order["tickets"][0]["seat"]
    assert order["people"][0]["id_no"] not in first["code"]

    png = await api.get(f"/api/v1/tickets/{ticket_no}/qr.png", token=token)
    assert png.status == 200 and png.headers["Content-Type"] == "image/png"
    stranger = await member(api)
    hidden = await api.get(f"/api/v1/tickets/{ticket_no}/qr", token=stranger)
    assert hidden.status == 404 and hidden.error_code == "TICKET_NOT_FOUND"

    # the step moves on: a code from two steps back no longer boards
    ticket = await db.tickets.find_one({"ticket_no": ticket_no})
    dep = await db.departures.find_one({"_id": ticket["departure_id"]})
    old = await services.gate.code_for(ticket, dep, now=time.time() - 2 * 30 - 1)
    gate = await gate_token(api)
    assert (await scan(api, gate, old["code"]))["outcome"] == "expired_code"
    previous = await services.gate.code_for(ticket, dep, now=time.time() - 30)
    assert (await scan(api, gate, previous["code"]))["outcome"] == "admitted"


@pytest.mark.gen_test(timeout=60)
async def test_a_ticket_is_admitted_once_and_then_reported_used(api, db, services) -> None:
    token, dep_id, order = await boarding(api, db, services, passengers=2)
    gate = await gate_token(api)
    first, second = [await qr(api, token, t["ticket_no"]) for t in order["tickets"]]
    admitted = await scan(api, gate, first["code"], departure_id=dep_id)
    assert admitted["outcome"] == "admitted" and admitted["seat"] == order["tickets"][0]["seat"]
    assert admitted["passenger"].startswith("乘") and "*" in admitted["passenger"]
    used = await scan(api, gate, first["code"], departure_id=dep_id, gate_id="G2")
    assert used["outcome"] == "already_used"
    assert used["used_at"] and used["used_gate"]

    manifest = await api.get(f"/api/v1/gate/departures/{dep_id}/manifest", token=gate)
    assert manifest.status == 200, manifest.text
    assert manifest.body["sold"] == 2 and manifest.body["checked_in"] == 1
    rows = {r["ticket_no"]: r for r in manifest.body["passengers"]}
    assert rows[first["ticket_no"]]["checked_in"] is True
    assert rows[second["ticket_no"]]["checked_in"] is False
    assert "*" in rows[second["ticket_no"]]["passenger"]["id_no"]
    # a checked-in ticket can no longer be refunded
    refused = await api.post(f"/api/v1/tickets/{first['ticket_no']}/refund", {}, token=token)
    assert refused.status == 409
    logged = await db.gate_scans.count_documents({"ticket_no": first["ticket_no"]})
    assert logged == 2

    # the station and the driver sign the manifest off: the bus has left
    signed = await api.post(f"/api/v1/gate/departures/{dep_id}/sign-off",
                            {"driver_name": "李师傅", "vehicle_plate": "粤A12345"}, token=gate)
    assert signed.status == 201, signed.text
    assert signed.body["sold"] == 2 and signed.body["checked_in"] == 1
    assert signed.body["no_shows"] == [second["ticket_no"]]
    again = await api.post(f"/api/v1/gate/departures/{dep_id}/sign-off",
                           {"driver_name": "李师傅"}, token=gate)
    assert again.status == 409 and again.error_code == "ALREADY_SIGNED_OFF"
    assert (await scan(api, gate, second["code"]))["outcome"] == "departed"
    shown = await api.get(f"/api/v1/gate/departures/{dep_id}/manifest", token=gate)
    assert shown.body["signed_off"]["driver_name"] == "李师傅"


@pytest.mark.reliability("R12")
@pytest.mark.gen_test(timeout=120)
async def test_every_flipped_byte_and_foreign_signatures_are_forged(api, db,
                                                                    services) -> None:
    token, _, order = await boarding(api, db, services)
    gate = await gate_token(api)
    code = (await qr(api, token, order["tickets"][0]["ticket_no"]))["code"]
    raw = ticketcode.b45decode(code[4:])
    outcomes = set()
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        got = await scan(api, gate, "KY1:" + ticketcode.b45encode(bytes(tampered)))
        outcomes.add(got["outcome"])
    assert outcomes == {"forged"}
    fields, _, _ = ticketcode.parse(code)
    mallory = Ed25519PrivateKey.generate()  # same layout and key id, someone else's key
    forged = ticketcode.sign(fields, mallory)
    assert (await scan(api, gate, forged))["outcome"] == "forged"
    for junk in ["", "KY1:", "hello", "KY1:" + "A" * 137, "KY2:" + code[4:], code[:-3]]:
        if junk:
            assert (await scan(api, gate, junk))["outcome"] == "forged", junk
    # the genuine code still boards: none of the above used it up
    assert (await scan(api, gate, code))["outcome"] == "admitted"
    record("R12", load=f"one ticket's QR code: each of its {len(raw)} bytes flipped in turn, "
                       "a same-layout code signed by another key, 6 malformed codes",
           faults="tampering and forgery", checked="each scan's outcome; the ticket after",
           figure=f"{len(raw) + 7} of {len(raw) + 7} refused as forged; the genuine code "
                  "then admitted once")


@pytest.mark.gen_test(timeout=60)
async def test_refunded_wrong_station_wrong_departure_too_early_departed(
        api, db, services) -> None:
    gate = await gate_token(api)
    token, dep_id, order = await boarding(api, db, services, passengers=2)
    refunded, departing = order["tickets"]
    code = (await qr(api, token, refunded["ticket_no"]))["code"]
    done = await api.post(f"/api/v1/tickets/{refunded['ticket_no']}/refund", {}, token=token)
    assert done.status == 200, done.text
    assert (await scan(api, gate, code))["outcome"] == "refunded"
    assert (await api.get(f"/api/v1/tickets/{refunded['ticket_no']}/qr",
                          token=token)).status == 409

    code = (await qr(api, token, departing["ticket_no"]))["code"]
    other_dep = await make_departure(db, departs_in=dt.timedelta(minutes=50),
                                     station_id=GATE_STATION)
    assert (await scan(api, gate, code, departure_id=other_dep))["outcome"] == \
        "wrong_departure"
    await db.departures.update_one({"_id": dep_id}, {"$set": {
        "departs_at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)}})
    assert (await scan(api, gate, code))["outcome"] == "departed"

    token, _, order = await boarding(api, db, services, departs_in=dt.timedelta(days=2))
    early = await scan(api, gate, (await qr(api, token, order["tickets"][0]["ticket_no"])
                                   )["code"])
    assert early["outcome"] == "too_early" and early["opens_at"]

    elsewhere = await db.stations.find_one({"_id": {"$ne": GATE_STATION},
                                            "system.vendor": "native"})
    token, _, order = await boarding(api, db, services, station=elsewhere["_id"])
    code = (await qr(api, token, order["tickets"][0]["ticket_no"]))["code"]
    assert (await scan(api, gate, code))["outcome"] == "wrong_station"


@pytest.mark.gen_test(timeout=60)
async def test_the_passenger_must_be_the_person_on_the_ticket(api, db, services) -> None:
    gate = await gate_token(api)
    token, _, order = await boarding(api, db, services)
    ticket_no = order["tickets"][0]["ticket_no"]
    code = (await qr(api, token, ticket_no))["code"]
    wrong = await scan(api, gate, code, id_no=person()["id_no"])
    assert wrong["outcome"] == "identity_mismatch"
    assert (await db.tickets.find_one({"ticket_no": ticket_no}))["status"] == "issued"
    right = await scan(api, gate, code, id_no=order["people"][0]["id_no"].lower())
    assert right["outcome"] == "admitted" and right["realname"] == "match"
    checked = (await db.tickets.find_one({"ticket_no": ticket_no}))["checked_in"]
    assert checked["realname"] == "match"
    scans = await db.gate_scans.find({"ticket_no": ticket_no}).sort("at", 1).to_list()
    assert [s["realname"] for s in scans] == ["mismatch", "match"]
    assert all(order["people"][0]["id_no"] not in json.dumps(s, default=str) for s in scans)


@pytest.mark.reliability("R12")
@pytest.mark.gen_test(timeout=120)
async def test_two_gates_on_two_processes_scanning_at_once_admit_exactly_once(
        api, db, services, other) -> None:
    token, _, order = await boarding(api, db, services, passengers=5)
    first, second = ApiClient(api.base_url), ApiClient(other.base_url)
    gate_a, gate_b = await gate_token(first), await gate_token(second)
    for ticket in order["tickets"]:
        code = (await qr(api, token, ticket["ticket_no"]))["code"]
        results = await asyncio.gather(
            *[scan(first, gate_a, code, gate_id="A") for _ in range(3)],
            *[scan(second, gate_b, code, gate_id="B") for _ in range(3)])
        outcomes = sorted(r["outcome"] for r in results)
        assert outcomes == ["admitted"] + ["already_used"] * 5, outcomes
        winner = next(r for r in results if r["outcome"] == "admitted")
        losers = [r for r in results if r["outcome"] == "already_used"]
        assert {r["used_at"] for r in losers} == {
            (await db.tickets.find_one({"ticket_no": ticket["ticket_no"]})
             )["checked_in"]["at"].astimezone(LOCAL_TZ).isoformat()}
        assert winner["ticket_no"] == ticket["ticket_no"]
    record("R12", load=f"{len(order['tickets'])} tickets, each scanned 6 times at once by "
                       "two gates on two Keyun processes",
           faults="concurrent scans of one code (a replay at the next gate)",
           checked="each scan's outcome; the ticket's check-in record",
           figure=f"{len(order['tickets'])} × exactly 1 admitted, 5 told already used "
                  "(with the first admission's time)")


@pytest.mark.gen_test(timeout=60)
async def test_without_a_day_the_gate_works_with_today_and_tomorrow(api, db, services) -> None:
    # a bus on tomorrow's service day (here two hours after the coming midnight) must already
    # be on the picker and in the offline bundle: one leaving at 00:10 boards before midnight
    now = dt.datetime.now(LOCAL_TZ)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), LOCAL_TZ)
    _, dep_id, order = await boarding(api, db, services,
                                      departs_in=midnight - now + dt.timedelta(hours=2))
    tomorrow = (await db.departures.find_one({"_id": dep_id}))["service_date"]
    assert tomorrow == (now.date() + dt.timedelta(days=1)).isoformat()
    gone = await make_departure(db, stops=2, departs_in=dt.timedelta(minutes=-10),
                                station_id=GATE_STATION)
    gone_day = (await db.departures.find_one({"_id": gone}))["service_date"]
    gate = await gate_token(api)

    picker = await api.get("/api/v1/gate/departures", token=gate)
    assert picker.status == 200, picker.text
    assert dep_id in [d["id"] for d in picker.body["departures"]]
    assert gone not in [d["id"] for d in picker.body["departures"]]  # its bus has left
    that_day = await api.get(f"/api/v1/gate/departures?date={gone_day}", token=gate)
    assert gone in [d["id"] for d in that_day.body["departures"]]
    for bad in ("2026-13-01", "tomorrow", "2026-1-1"):
        for path in (f"/api/v1/gate/departures?date={bad}",
                     f"/api/v1/gate/bundle?station={GATE_STATION}&date={bad}"):
            resp = await api.get(path, token=gate)
            assert resp.status == 400 and resp.error_code == "INVALID_QUERY", (path, resp.text)
    times = [d["departs_at"] for d in picker.body["departures"]]
    assert times == sorted(times)
    today_only = await api.get(f"/api/v1/gate/departures?date={now.date().isoformat()}",
                               token=gate)
    assert dep_id not in [d["id"] for d in today_only.body["departures"]]

    bundle = await api.get(f"/api/v1/gate/bundle?station={GATE_STATION}", token=gate)
    assert bundle.status == 200, bundle.text
    payload = json.loads(bundle.body["payload"])
    assert payload["dates"] == [now.date().isoformat(), tomorrow]
    assert order["tickets"][0]["ticket_no"] in {t["t"] for t in payload["tickets"]}
    assert dep_id in {d["id"] for d in payload["departures"]}


@pytest.mark.reliability("R12")
@pytest.mark.gen_test(timeout=120)
async def test_offline_bundle_and_uploads_count_once_and_report_double_admissions(
        api, db, services) -> None:
    gate = await gate_token(api)
    token, dep_id, order = await boarding(api, db, services, passengers=3)
    valid, refunded, doubled = order["tickets"]
    await api.post(f"/api/v1/tickets/{refunded['ticket_no']}/refund", {}, token=token)
    date = (await db.departures.find_one({"_id": dep_id}))["service_date"]
    resp = await api.get(f"/api/v1/gate/bundle?station={GATE_STATION}&date={date}", token=gate)
    assert resp.status == 200, resp.text
    bundle = resp.body
    payload = json.loads(bundle["payload"])
    keys = {k["kid"]: k["x"] for k in payload["keys"]}
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(
        keys[bundle["kid"]] + "=="))
    public.verify(base64.urlsafe_b64decode(bundle["signature"] + "=="),
                  bundle["payload"].encode())  # raises if tampered
    listed = {t["t"] for t in payload["tickets"]}
    assert valid["ticket_no"] in listed and refunded["ticket_no"] not in listed
    assert refunded["ticket_no"] in payload["revoked"]
    assert all("*" in t["p"] for t in payload["tickets"])
    other = await api.get(f"/api/v1/gate/bundle?station=440303001&date={date}", token=gate)
    assert other.status == 403

    now = dt.datetime.now(dt.UTC)
    codes = {t["ticket_no"]: (await qr(api, token, t["ticket_no"]))["code"]
             for t in (valid, doubled)}
    batch = [{"nonce": uuid.uuid4().hex, "code": codes[valid["ticket_no"]],
              "scanned_at": now.isoformat(), "local_outcome": "admitted",
              "bundle_issued_at": payload["issued_at"]},
             {"nonce": uuid.uuid4().hex, "code": codes[doubled["ticket_no"]],
              "scanned_at": now.isoformat(), "local_outcome": "admitted"}]
    up = await api.post("/api/v1/gate/offline-scans", {"gate_id": "G-east", "scans": batch},
                        token=gate)
    assert up.status == 200, up.text
    assert up.body["accepted"] == 2 and up.body["conflicts"] == []
    for bad in ("yesterday", "2026-11-24T08:00:00"):  # no offset: whose 08:00?
        refused = await api.post("/api/v1/gate/offline-scans", {"gate_id": "G-east", "scans": [
            {**batch[0], "nonce": uuid.uuid4().hex, "scanned_at": bad}]}, token=gate)
        assert refused.status == 400 and refused.error_code == "INVALID_VALUE", refused.text
    # times no bundle was valid at: before it was made, after it expired, in the future
    issued = payload["issued_at"]
    made = dt.datetime.fromisoformat(issued)
    for bad, named in (((made - dt.timedelta(hours=2)).isoformat(), issued),
                       ((made + dt.timedelta(hours=31)).isoformat(), issued),
                       ((now - dt.timedelta(hours=31)).isoformat(), None),
                       ((now + dt.timedelta(hours=1)).isoformat(), None)):
        scan = {**batch[1], "nonce": uuid.uuid4().hex, "scanned_at": bad,
                **({"bundle_issued_at": named} if named else {})}
        refused = await api.post("/api/v1/gate/offline-scans", {"gate_id": "G-east", "scans": [
            scan]}, token=gate)
        assert refused.status == 422, (bad, named)
        assert refused.error_code == "OFFLINE_SCAN_OUT_OF_BUNDLE"
        assert refused.body["error"]["field"] == "scans[0].scanned_at"
    assert await db.gate_scans.count_documents({"ticket_no": doubled["ticket_no"]}) == 1
    again = await api.post("/api/v1/gate/offline-scans", {"gate_id": "G-east",
                                                          "scans": batch}, token=gate)
    assert again.body["accepted"] == 0 and again.body["duplicates"] == 2
    assert await db.gate_scans.count_documents({"ticket_no": valid["ticket_no"]}) == 1

    # another gate, also offline, admitted the same passenger a minute later
    west = [{"nonce": uuid.uuid4().hex, "code": codes[doubled["ticket_no"]],
             "scanned_at": (now + dt.timedelta(seconds=20)).isoformat(),
             "local_outcome": "admitted"}]
    up = await api.post("/api/v1/gate/offline-scans", {"gate_id": "G-west", "scans": west},
                        token=gate)
    [conflict] = up.body["conflicts"]
    assert conflict["ticket_no"] == doubled["ticket_no"]
    assert conflict["first"]["gate"] == "G-east" and conflict["second"]["gate"] == "G-west"
    staff = (await api.login("station_staff"))["token"]
    listed = (await api.get("/api/v1/gate/conflicts", token=staff)).body["conflicts"]
    assert doubled["ticket_no"] in {c["ticket_no"] for c in listed}
    record("R12", load="an offline gate's bundle, a ticket refunded after it was taken, "
                       "uploads of the offline scans",
           faults="gates offline; the same passenger admitted at two offline gates; an "
                  "upload repeated",
           checked="the revoked list; scans stored; conflicts reported",
           figure="the refunded ticket in the bundle's revoked list; each scan stored once "
                  "(repeat: 0 accepted, 2 duplicates); the double admission reported as 1 "
                  "conflict to station staff")


@pytest.mark.gen_test(timeout=60)
async def test_rotated_keys_keep_verifying_old_codes(api, db, services) -> None:
    gate = await gate_token(api)
    token, _, order = await boarding(api, db, services, passengers=2)
    old_code = (await qr(api, token, order["tickets"][0]["ticket_no"]))["code"]
    operator = (await api.login("operator"))["token"]
    rotated = await api.post("/api/v1/gate/keys/rotate", {}, token=operator)
    assert rotated.status == 201, rotated.text
    assert len(rotated.body["keys"]) >= 2
    await asyncio.sleep(0.1)
    assert (await scan(api, gate, old_code))["outcome"] == "admitted"
    fields, _, _ = ticketcode.parse(old_code)
    assert fields.kid != rotated.body["kid"]
    # a key made by another process just now: the server looks again instead of "forged"
    kid = await services.gate.keys.rotate()
    ticket = await db.tickets.find_one({"ticket_no": order["tickets"][1]["ticket_no"]})
    dep = await db.departures.find_one({"_id": ticket["departure_id"]})
    fresh = await services.gate.code_for(ticket, dep)
    assert ticketcode.parse(fresh["code"])[0].kid == kid
    assert (await scan(api, gate, fresh["code"]))["outcome"] == "admitted"


@pytest.mark.gen_test(timeout=60)
async def test_processes_rotating_at_once_agree_on_one_signing_key(api, db, services) -> None:
    # several processes rotating at the same moment (e.g. all starting on an empty store) must
    # end with one current key they all sign with, not with every new key retired by another
    from server.services.gate import GateKeys
    from server.storage.gate import GateRecords

    processes = [GateKeys(db, services.gate._vault) for _ in range(4)]
    made = await asyncio.gather(*[keys.rotate() for keys in processes])
    current = await db.gate_keys.find({"retired_at": None}).to_list()
    assert [k["_id"] for k in current] == [max(current, key=lambda k: (k["created_at"],
                                                                       k["_id"]))["_id"]]
    assert current[0]["_id"] in made
    for keys in processes:
        await keys._load(force=True)
        assert (await keys.signing())[0] == current[0]["_id"]
        assert set(made) <= set(await keys.verifying())  # the losers still verify
    # a process whose clock read earlier but whose insert landed last: its own clean-up
    # (which follows its insert) retires its key, not the newest
    late = {**current[0], "_id": current[0]["_id"] ^ 0x5A5A5A5A,
            "created_at": current[0]["created_at"] - dt.timedelta(seconds=1)}
    await db.gate_keys.insert_one(late)
    await GateRecords(db).retire_all_but_newest(dt.datetime.now(dt.UTC))
    assert [k["_id"] for k in await db.gate_keys.find({"retired_at": None}).to_list()] == \
        [current[0]["_id"]]


@pytest.mark.gen_test(timeout=60)
async def test_a_kiosk_hands_out_the_ticket_for_its_pickup_code_once(api, db,
                                                                    services) -> None:
    token, _, order = await boarding(api, db, services)
    ticket_no = order["tickets"][0]["ticket_no"]
    pickup_code = (await qr(api, token, ticket_no))["pickup_code"]
    kiosk = (await api.login("kiosk"))["token"]
    wrong = await api.post("/api/v1/tickets/pickup", {"pickup_code": pickup_code,
                                                      "id_no": person()["id_no"]}, token=kiosk)
    assert wrong.status == 404 and wrong.error_code == "PICKUP_CODE_INVALID"
    done = await api.post("/api/v1/tickets/pickup", {"pickup_code": pickup_code,
                                                     "id_no": order["people"][0]["id_no"]},
                          token=kiosk)
    assert done.status == 200, done.text
    assert done.body["ticket_no"] == ticket_no and done.body["status"] == "picked_up"
    again = await api.post("/api/v1/tickets/pickup", {"pickup_code": pickup_code},
                           token=kiosk)  # a bare code: used and wrong look alike
    assert again.status == 404 and again.error_code == "PICKUP_CODE_INVALID"
    again = await api.post("/api/v1/tickets/pickup", {"pickup_code": pickup_code,
                                                      "id_no": order["people"][0]["id_no"]},
                           token=kiosk)  # the passenger's own card: told why
    assert again.status == 409 and again.error_code == "ALREADY_PICKED_UP"
    passenger = await api.post("/api/v1/tickets/pickup", {"pickup_code": pickup_code},
                               token=token)
    assert passenger.status == 403
    # a paper ticket still boards through its code, once
    gate = await gate_token(api)
    code = (await qr(api, token, ticket_no))["code"]
    assert (await scan(api, gate, code))["outcome"] == "admitted"


@pytest.mark.gen_test(timeout=60)
async def test_an_id_card_alone_picks_up_the_days_tickets(api, db, services) -> None:
    """The card reader gives the number; the person's tickets here today are printed (each
    once); a card with no ticket here counts as a wrong try."""
    token, _, order = await boarding(api, db, services, passengers=2)
    kiosk = (await api.login("kiosk"))["token"]
    card = order["people"][1]["id_no"]
    first = await api.post("/api/v1/tickets/pickup-by-id", {"id_no": card}, token=kiosk)
    assert first.status == 200, first.text
    [printed] = first.body["tickets"]
    mine = next(t for t in order["tickets"] if t["passenger"]["name"] == "乘客1")
    assert printed["ticket_no"] == mine["ticket_no"] and printed["already"] is False
    assert (await db.tickets.find_one({"ticket_no": mine["ticket_no"]}))["status"] == \
        "picked_up"
    again = await api.post("/api/v1/tickets/pickup-by-id", {"id_no": card}, token=kiosk)
    assert again.status == 200 and again.body["tickets"][0]["already"] is True
    # the other passenger's ticket is untouched; a stranger's card finds nothing
    other = next(t for t in order["tickets"] if t["passenger"]["name"] == "乘客0")
    assert (await db.tickets.find_one({"ticket_no": other["ticket_no"]}))["status"] == \
        "issued"
    nobody = await api.post("/api/v1/tickets/pickup-by-id", {"id_no": person()["id_no"]},
                            token=kiosk)
    assert nobody.status == 404 and nobody.error_code == "NO_TICKETS_TODAY"
    bad = await api.post("/api/v1/tickets/pickup-by-id", {"id_no": "123"}, token=kiosk)
    assert bad.status == 422 and bad.error_code == "INVALID_ID_NUMBER"
    assert (await api.post("/api/v1/tickets/pickup-by-id", {"id_no": card}, token=token)
            ).status == 403


@pytest.mark.gen_test(timeout=60)
async def test_pickup_codes_cannot_be_guessed_without_limit(api, db, services) -> None:
    """Eight digits are guessable: wrong codes are limited per device (and per station)."""
    import secrets

    token, _, order = await boarding(api, db, services)
    pickup_code = (await qr(api, token, order["tickets"][0]["ticket_no"]))["pickup_code"]
    operator = (await api.login("operator"))["token"]
    devices = []
    for _ in range(2):
        username = "kiosk." + secrets.token_hex(3)
        made = await api.post("/api/v1/admin/staff", {
            "username": username, "password": "kiosk-pass-1", "role": "kiosk",
            "station_id": "440111001"}, token=operator)
        assert made.status == 201, made.text
        devices.append((await api.login(username, "kiosk-pass-1"))["token"])
    guesser, neighbour = devices
    for guess in range(10):
        wrong = await api.post("/api/v1/tickets/pickup",
                               {"pickup_code": f"{guess:08d}"}, token=guesser)
        assert wrong.status == 404 and wrong.error_code == "PICKUP_CODE_INVALID"
    blocked = await api.post("/api/v1/tickets/pickup", {"pickup_code": pickup_code},
                             token=guesser)
    assert blocked.status == 429 and blocked.error_code == "TOO_MANY_ATTEMPTS"
    assert int(blocked.headers["Retry-After"]) > 0
    # unknown ID cards count the same way
    blocked = await api.post("/api/v1/tickets/pickup-by-id",
                             {"id_no": order["people"][0]["id_no"]}, token=guesser)
    assert blocked.status == 429 and blocked.error_code == "TOO_MANY_ATTEMPTS"
    # the station's other kiosk still serves passengers
    served = await api.post("/api/v1/tickets/pickup", {"pickup_code": pickup_code},
                            token=neighbour)
    assert served.status == 200, served.text

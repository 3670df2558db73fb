"""The partner API end to end over real HTTP: the operator registers a partner, issues a key
(its secret shown once) and finance records a deposit; the partner, signing every request as
the published document says, searches, books, confirms (paid from its deposit), reads and
refunds — and forged, stale and replayed requests are refused with their own codes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tests.booking_support import native_departure, person
from tests.support import ApiClient, Response


def canonical_query(query: str) -> str:
    """As the partner document says: parameters sorted by name (then value), names and values
    percent-encoded (RFC 3986 unreserved kept), ``name=value`` joined with ``&``. Written
    here from the document, not imported from Keyun: what a partner's developer would do."""
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def sign(secret: str, method: str, path: str, query: str, timestamp: str, nonce: str,
         body: bytes) -> str:
    text = "\n".join([method.upper(), path, canonical_query(query), timestamp, nonce,
                      hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


class PartnerClient:
    """A partner's client written from the partner API document (the signing rule)."""

    def __init__(self, api: ApiClient, key_id: str, secret: str) -> None:
        self.api, self.key_id, self.secret = api, key_id, secret

    def headers(self, method: str, path: str, query: str, body: bytes, *,
                timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or secrets.token_hex(12)
        return {"X-Keyun-Key": self.key_id, "X-Keyun-Timestamp": ts, "X-Keyun-Nonce": nonce,
                "X-Keyun-Signature": sign(self.secret, method, path, query, ts, nonce, body),
                "Content-Type": "application/json"}

    async def call(self, method: str, path: str, body: Any = None,
                   params: dict[str, str] | None = None, **sign: Any) -> Response:
        raw = b"" if body is None else json.dumps(body).encode()
        query = urlencode(params or {})
        return await self.api.request(
            method, path + (f"?{query}" if query else ""), raw=raw if body is not None else None,
            headers=self.headers(method, path, query, raw, **sign))


async def _partner(api: ApiClient, balance: int, webhook_url: str = ""
                   ) -> tuple[str, PartnerClient]:
    operator = (await api.login("operator"))["token"]
    finance = (await api.login("finance"))["token"]
    code = "P" + uuid.uuid4().hex[:8]
    made = await api.post("/api/v1/admin/partners", {
        "code": code, "name": "巴士旅行网", "credit_limit": 0,
        **({"webhook_url": webhook_url} if webhook_url else {})}, token=operator)
    assert made.status == 201, made.text
    for url, status, error in (("https://[", 422, "WEBHOOK_URL_INVALID"),
                               ("http://partner.example/hook", 422, "WEBHOOK_URL_INVALID"),
                               ("ftp://partner.example/hook", 400, "INVALID_VALUE")):
        bad = await api.post("/api/v1/admin/partners", {"code": code + "W", "name": "x",
                                                         "webhook_url": url}, token=operator)
        assert (bad.status, bad.error_code) == (status, error), (url, bad.text)
    again = await api.post("/api/v1/admin/partners", {"code": code, "name": "重复"},
                           token=operator)
    assert again.status == 409 and again.error_code == "PARTNER_EXISTS"
    key = await api.post(f"/api/v1/admin/partners/{made.body['id']}/keys", token=operator)
    assert key.status == 201 and len(key.body["secret"]) >= 32
    listed = await api.get("/api/v1/admin/partners", token=finance)
    assert key.body["secret"] not in listed.text  # shown once, never again
    if balance:
        top = await api.post(f"/api/v1/admin/partners/{made.body['id']}/deposits",
                             {"amount": balance, "reference": "BANK-" + code}, token=finance)
        assert top.status == 200 and top.body["balance"] == balance, top.text
    return made.body["id"], PartnerClient(api, key.body["key_id"], key.body["secret"])


@pytest.mark.gen_test(timeout=90)
async def test_a_partner_books_confirms_reads_and_refunds(api: ApiClient, db,
                                                          services) -> None:
    partner_id, client = await _partner(api, 100_000)
    dep = await native_departure(db, 4, 2)
    origin = await db.stations.find_one({"_id": dep["station_id"]})
    found = await client.call("GET", "/partner/v1/departures",
                              params={"from": origin["_id"], "to": origin["city"],
                                      "date": dep["service_date"]})
    assert found.status == 200, found.text
    booked = await client.call("POST", "/partner/v1/orders", {
        "departure_id": dep["_id"], "contact_phone": "13812345678",
        "passengers": [person(), person()]})
    assert booked.status == 201, booked.text
    order = booked.body
    assert order["channel"] == "partner" and order["status"] == "pending_payment"
    confirmed = await client.call("POST", f"/partner/v1/orders/{order['order_no']}/confirm")
    assert confirmed.status == 200, confirmed.text
    assert confirmed.body["status"] == "issued"
    partner = await db.partners.find_one({"_id": partner_id})
    assert partner["balance"] == 100_000 - order["amount"]
    moved = await db.money_movements.find_one({"order_no": order["order_no"],
                                               "kind": "payment"})
    assert moved["provider"] == "partner_deposit" and moved["partner_id"] == partner_id

    # another partner cannot see it; the partner reads it
    _, other = await _partner(api, 0)
    assert (await other.call("GET", f"/partner/v1/orders/{order['order_no']}")).status == 404
    mine = await client.call("GET", f"/partner/v1/orders/{order['order_no']}")
    assert mine.status == 200 and len(mine.body["tickets"]) == 2

    # a refund goes back to the deposit, less the fee of the rules in force
    ticket = mine.body["tickets"][0]
    refunded = await client.call("POST", f"/partner/v1/tickets/{ticket['ticket_no']}/refund",
                                 {})
    assert refunded.status == 200, refunded.text
    await services.payments.execute_refunds()
    for _ in range(50):
        request = await db.refund_requests.find_one({"ticket_no": ticket["ticket_no"]})
        if request and request["status"] == "done":
            break
        await services.payments.execute_refunds()
    partner = await db.partners.find_one({"_id": partner_id})
    assert partner["balance"] == 100_000 - order["amount"] + refunded.body["refund_amount"]
    operator = (await api.login("operator"))["token"]
    trail = (await api.get("/api/v1/admin/audit?action=partner.key_issued",
                           token=operator)).body["entries"]
    assert any(e["target"] == partner_id for e in trail)


@pytest.mark.gen_test(timeout=60)
async def test_forged_stale_and_replayed_requests_are_refused(api: ApiClient, db) -> None:
    _, client = await _partner(api, 0)
    dep = await native_departure(db, 4, 3)
    body = {"departure_id": dep["_id"], "contact_phone": "13812345678",
            "passengers": [person()]}
    raw = json.dumps(body).encode()
    # signed, then the body changed on the way
    headers = client.headers("POST", "/partner/v1/orders", "", raw)
    tampered = await api.request("POST", "/partner/v1/orders", raw=raw.replace(b"138", b"139"),
                                 headers=headers)
    assert tampered.status == 401 and tampered.error_code == "SIGNATURE_INVALID"
    wrong_key = PartnerClient(api, client.key_id, "not-the-secret")
    assert (await wrong_key.call("GET", "/partner/v1/orders/KY1")).error_code == \
        "SIGNATURE_INVALID"
    stale = await client.call("GET", "/partner/v1/orders/KY1", timestamp=int(time.time()) - 400)
    assert stale.status == 401 and stale.error_code == "TIMESTAMP_OUT_OF_WINDOW"
    unsigned = await api.get("/partner/v1/orders/KY1")
    assert unsigned.status == 401 and unsigned.error_code == "SIGNATURE_INVALID"
    # the same genuine request twice: the second is a replay
    nonce = secrets.token_hex(12)
    first = await client.call("GET", "/partner/v1/orders/KY1", nonce=nonce)
    assert first.status == 404  # genuine: the order does not exist
    replay = await client.call("GET", "/partner/v1/orders/KY1", nonce=nonce)
    assert replay.status == 401 and replay.error_code == "NONCE_REUSED"
    # a partner with no deposit cannot confirm: nothing taken, the order still unpaid
    booked = await client.call("POST", "/partner/v1/orders", body)
    assert booked.status == 201, booked.text
    refused = await client.call("POST", f"/partner/v1/orders/{booked.body['order_no']}/confirm")
    assert refused.status == 409 and refused.error_code == "INSUFFICIENT_BALANCE"
    assert (await db.orders.find_one({"order_no": booked.body["order_no"]}))["status"] == \
        "pending_payment"
    # staff tokens do not open the partner API, partner keys do not open staff routes
    operator = (await api.login("operator"))["token"]
    assert (await api.get("/partner/v1/orders/KY1", token=operator)).status == 401
    doc = await api.get("/partner/v1/openapi.json")
    assert doc.status == 200 and "/partner/v1/orders/{order_no}/confirm" in doc.body["paths"]
    assert "X-Keyun-Signature" in doc.body["info"]["description"]
    # the worked example: this client, written from the document, signs it the same way
    example = doc.body["info"]["x-signing-example"]
    assert sign(example["secret"], example["method"], example["path"], example["query"],
                example["timestamp"], example["nonce"], example["body"].encode()) == \
        example["signature"]
    assert example["string_to_sign"].split("\n")[2] == "channel=app&lang=zh"
    assert "orderEvent" in doc.body["webhooks"]
    assert not any(p.startswith("/partner/") for p in
                   (await api.get("/api/openapi.json")).body["paths"])


@pytest.mark.gen_test(timeout=120)
async def test_order_events_reach_the_partners_webhook_signed_and_retried(api: ApiClient,
                                                                         db) -> None:
    """The partner's receiver refuses each event twice (it is down); Keyun tries again after
    2 s and 4 s, and every request carries a signature the partner checks with its secret
    (by the document's rule) — the paid and issued order, then a refunded ticket."""
    received: list[tuple[float, dict[str, Any], bool]] = []
    refused: dict[str, int] = {}
    secret: list[str] = []

    class Hook(RequestHandler):
        def post(self) -> None:
            h = self.request.headers
            ok = hmac.compare_digest(sign(secret[0], "POST", self.request.path,
                                          self.request.query, h["X-Keyun-Timestamp"],
                                          h["X-Keyun-Nonce"], self.request.body),
                                     h["X-Keyun-Signature"])
            event = json.loads(self.request.body)
            received.append((time.monotonic(), event, ok))
            assert h["X-Keyun-Delivery"] == event["id"]
            refused[event["id"]] = refused.get(event["id"], 0) + 1
            self.set_status(503 if refused[event["id"]] <= 2 else 204)

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([("/hook", Hook)]))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        _, client = await _partner(api, 100_000, f"http://127.0.0.1:{port}/hook?from=keyun")
        secret.append(client.secret)
        dep = await native_departure(db, 5, 6)
        booked = await client.call("POST", "/partner/v1/orders", {
            "departure_id": dep["_id"], "contact_phone": "13812345678",
            "passengers": [person()]})
        assert booked.status == 201, booked.text
        order_no = booked.body["order_no"]
        assert (await client.call("POST", f"/partner/v1/orders/{order_no}/confirm")
                ).body["status"] == "issued"
        ticket = booked.body["tickets"][0]["ticket_no"]
        assert (await client.call("POST", f"/partner/v1/tickets/{ticket}/refund", {})
                ).status == 200

        def delivered() -> set[tuple[str, str]]:
            return {(e["event"], e["data"].get("status", "")) for _, e, _ in received
                    if refused[e["id"]] > 2}

        wanted = {("order.status", "paid"), ("order.status", "issued"),
                  ("ticket.refunded", "refunded")}
        for _ in range(120):
            if wanted <= delivered():
                break
            await asyncio.sleep(0.25)
        assert wanted <= delivered(), received
    finally:
        server.stop()
    assert all(ok for _, _, ok in received), "a webhook did not verify"
    attempts = [t for t, e, _ in received if e["data"].get("status") == "issued"]
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 1.8 and attempts[2] - attempts[1] >= 3.8
    stored = await db.webhooks.find_one({"data.order_no": order_no,
                                         "data.status": "issued"})
    assert stored["status"] == "delivered" and stored["attempts"] == 3


@pytest.mark.gen_test(timeout=90)
async def test_keys_rotate_and_each_partner_is_held_to_its_rate_quota_and_status(
        api: ApiClient, db) -> None:
    operator = (await api.login("operator"))["token"]
    partner_id, old = await _partner(api, 100_000)
    admin = f"/api/v1/admin/partners/{partner_id}"
    # rotation: a second key lives beside the first; a third waits for one to go
    new = await api.post(f"{admin}/keys", token=operator)
    assert new.status == 201, new.text
    third = await api.post(f"{admin}/keys", token=operator)
    assert third.status == 409 and third.error_code == "KEY_LIMIT"
    fresh = PartnerClient(api, new.body["key_id"], new.body["secret"])
    assert (await old.call("GET", "/partner/v1/orders/KY1")).error_code == "ORDER_NOT_FOUND"
    assert (await fresh.call("GET", "/partner/v1/orders/KY1")).error_code == "ORDER_NOT_FOUND"
    listed = await api.get(f"{admin}/keys", token=operator)
    assert [k["key_id"] for k in listed.body["keys"]] == [old.key_id, fresh.key_id]
    revoked = await api.post(f"{admin}/keys/{old.key_id}/revoke", token=operator)
    assert revoked.status == 204
    assert (await old.call("GET", "/partner/v1/orders/KY1")).error_code == "SIGNATURE_INVALID"

    # a daily quota of one ticket: the second order is refused, nothing held
    quota = await api.patch(admin, {"daily_quota": 1}, token=operator)
    assert quota.status == 200 and quota.body["daily_quota"] == 1
    dep = await native_departure(db, 5, 7)
    order = {"departure_id": dep["_id"], "contact_phone": "13812345678"}
    first = await fresh.call("POST", "/partner/v1/orders", {**order, "passengers": [person()]})
    assert first.status == 201, first.text
    second = await fresh.call("POST", "/partner/v1/orders", {**order, "passengers": [person()]})
    assert second.status == 409 and second.error_code == "PARTNER_QUOTA_EXCEEDED"
    assert await db.orders.count_documents({"partner_id": partner_id}) == 1

    # a rate of three requests a minute (a partner that has made none yet): the fourth
    # waits, and is told how long
    slow_id, slow = await _partner(api, 0)
    await api.patch(f"/api/v1/admin/partners/{slow_id}", {"rate_per_minute": 3},
                    token=operator)
    answers = [await slow.call("GET", "/partner/v1/orders/KY1") for _ in range(4)]
    assert [a.status for a in answers] == [404, 404, 404, 429]
    assert answers[3].error_code == "PARTNER_RATE_LIMITED"
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60

    # suspended: refused as such, whatever the key
    await api.patch(admin, {"status": "suspended", "rate_per_minute": 600}, token=operator)
    stopped = await fresh.call("GET", "/partner/v1/orders/KY1")
    assert stopped.status == 403 and stopped.error_code == "PARTNER_SUSPENDED"

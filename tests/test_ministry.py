"""The exchange with the ministry's platform and the 运政 system (C9) over real HTTP, against
the ministry sandbox: a day's files, their counts against the day's sales, the signed
manifest, the platform's receipt reconciled (and a miscount found), and base data changes
pulled from the 运政 system through the import."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import secrets
import zipfile
from typing import Any
from urllib.parse import quote

import pytest

from server.clock import day_start, local_today
from tests.booking_support import issued_order, member, person
from tests.inventory_support import make_departure
from tests.support import TEST_SECRETS, ApiClient

GZ_STATION = "440111001"


async def sandbox(api: ApiClient, providers, path: str, body: dict[str, Any]) -> Any:
    from tornado.httpclient import AsyncHTTPClient

    resp = await AsyncHTTPClient().fetch(f"{providers.url}{path}", method="POST",
                                         body=json.dumps(body, ensure_ascii=False))
    return json.loads(resp.body)


def read_csv(package: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(package.read(name).decode("utf-8"))))


@pytest.mark.gen_test(timeout=180)
async def test_a_days_files_count_its_sales_and_the_receipt_is_reconciled(
        api: ApiClient, db, services, providers) -> None:
    operator = (await api.login("operator"))["token"]
    dep_id = await make_departure(db, seats=8, stops=2, departs_in=dt.timedelta(days=1),
                                  station_id=GZ_STATION)
    people = [person("欧阳小明"), person("李四"), person("王五")]
    buyer = await member(api)
    order = await issued_order(api, services, buyer, dep_id, people)
    refunded = order["tickets"][0]["ticket_no"]
    back_out = await api.post(f"/api/v1/tickets/{refunded}/refund", {}, token=buyer)
    assert back_out.status == 200, back_out.text
    # the day must be over before it is sent: these sales move two days back (yesterday is
    # the daily job's, which the server may have sent already)
    yesterday = local_today() - dt.timedelta(days=2)
    back = dt.timedelta(days=2)
    for t in order["tickets"]:
        stored = await db.tickets.find_one({"ticket_no": t["ticket_no"]})
        moved = {"issued_at": stored["issued_at"] - back}
        if stored.get("refund"):
            moved["refund.at"] = stored["refund"]["at"] - back
        await db.tickets.update_one({"_id": stored["_id"]}, {"$set": moved})
    start, end = day_start(yesterday), day_start(yesterday + dt.timedelta(days=1))
    sold = await db.tickets.count_documents({"issued_at": {"$gte": start, "$lt": end}})
    refunds = await db.tickets.count_documents({"refund.at": {"$gte": start, "$lt": end},
                                                "status": "refunded"})
    assert sold >= 3

    today = await api.post("/api/v1/admin/ministry/exports",
                           {"date": local_today().isoformat()}, token=operator)
    assert today.status == 409 and today.error_code == "MINISTRY_DAY_OPEN"

    made = await api.post("/api/v1/admin/ministry/exports", {"date": yesterday.isoformat()},
                          token=operator)
    assert made.status == 201, made.text
    export = made.body
    assert export["status"] == "acknowledged", export
    files = {f["name"]: f for f in export["files"]}
    assert files["CP.csv"]["rows"] == sold and files["TP.csv"]["rows"] == refunds
    assert export["receipt"]["total_rows"] == export["rows"] and export["differences"] == []

    got = await api.get(f"/api/v1/admin/ministry/exports/{export['id']}.zip", token=operator)
    assert got.status == 200
    package = zipfile.ZipFile(io.BytesIO(got.raw))
    manifest_bytes = package.read("manifest.json")
    signature = hmac.new(TEST_SECRETS["KEYUN_MINISTRY_SECRET"].encode(), manifest_bytes,
                         hashlib.sha256).hexdigest()
    assert package.read("manifest.sig").decode() == signature
    manifest = json.loads(manifest_bytes)
    assert manifest["date"] == yesterday.isoformat() and manifest["platform"] == "440000"
    for entry in manifest["files"]:
        assert hashlib.sha256(package.read(entry["name"])).hexdigest() == entry["sha256"]
    tickets = {r["车票编号"]: r for r in read_csv(package, "CP.csv")}
    mine = tickets[order["tickets"][1]["ticket_no"]]
    assert mine["班次编号"] == dep_id and mine["客运站代码"] == GZ_STATION
    assert mine["票价"] == f"{order['tickets'][1]['price'] / 100:.2f}"
    # personal data masked: no clear ID number, no clear name
    raw = b"".join(package.read(n) for n in package.namelist())
    for p in people:
        assert p["id_no"].encode() not in raw
    assert "欧阳小明".encode() not in raw and "欧**明" in tickets[refunded]["乘车人姓名"]
    assert len(read_csv(package, "TJ.csv")) == files["TJ.csv"]["rows"]
    assert files["TJ.csv"]["element_set"] == "统计分析信息"

    # asked again: the acknowledged export, not sent twice
    again = await api.post("/api/v1/admin/ministry/exports", {"date": yesterday.isoformat()},
                           token=operator)
    assert again.status == 201 and again.body["revision"] == export["revision"]
    receipts = await _receipts(providers)
    sent_for_day = [r for r in receipts if r["date"] == yesterday.isoformat()]
    assert len(sent_for_day) == 1

    # the platform counts the sales one short: the difference is found and alerted
    await sandbox(api, providers, "/_sandbox/ministry/miscount", {"file": "CP.csv",
                                                                 "delta": -1})
    try:
        resent = await api.post("/api/v1/admin/ministry/exports",
                                {"date": yesterday.isoformat(), "resend": True}, token=operator)
    finally:
        await sandbox(api, providers, "/_sandbox/ministry/miscount", {"file": "CP.csv",
                                                                     "delta": 0})
    assert resent.body["status"] == "mismatch" and resent.body["revision"] == 2
    assert resent.body["differences"] == [{"file": "CP.csv", "sent": sold,
                                           "counted": sold - 1}]
    alerts = await api.get("/api/v1/admin/alerts?kind=ministry_count_mismatch", token=operator)
    assert any(a["key"] == f"ministry:{export['id']}" for a in alerts.body["alerts"])

    authority = (await api.login("authority"))["token"]
    assert (await api.get("/api/v1/admin/ministry/exports", token=authority)).status == 200
    assert (await api.get(f"/api/v1/admin/ministry/exports/{export['id']}.zip",
                          token=authority)).status == 403


async def _receipts(providers) -> list[dict[str, Any]]:
    from tornado.httpclient import AsyncHTTPClient

    resp = await AsyncHTTPClient().fetch(f"{providers.url}/_sandbox/ministry/receipts")
    return json.loads(resp.body)["receipts"]  # type: ignore[no-any-return]


@pytest.mark.gen_test(timeout=120)
async def test_yunzheng_changes_arrive_through_the_import(api: ApiClient, db,
                                                          providers) -> None:
    operator = (await api.login("operator"))["token"]
    plate = "粤A" + "".join(secrets.choice("0123456789") for _ in range(5))
    carrier = await db.carriers.find_one({"_id": "C44010001"})
    rating = "B" if carrier.get("quality_rating") != "B" else "AA"
    # the 运政 system's change files carry whole records
    await sandbox(api, providers, "/_sandbox/yunzheng/changes", {"kind": "carriers", "rows": [
        {"客运企业代码": "C44010001", "客运企业名称": carrier["name"],
         "所属行政区划": carrier["division"], "经营许可证号": carrier["licence_no"],
         "质量信誉考核": rating}]})
    await sandbox(api, providers, "/_sandbox/yunzheng/changes", {"kind": "vehicles", "rows": [
        {"车牌号码": plate, "客运企业代码": "C44010001", "厂牌型号": "宇通ZK6122",
         "车辆等级": "high_2", "核定载客数": "45"}]})
    pulled = await api.post("/api/v1/admin/ministry/yunzheng-pulls", {}, token=operator)
    assert pulled.status == 200, pulled.text
    kinds = pulled.body["kinds"]
    assert kinds["carriers"]["updated"] == 1 and kinds["vehicles"]["created"] == 1, kinds
    assert (await db.carriers.find_one({"_id": "C44010001"}))["quality_rating"] == rating
    vehicle = await api.get(f"/api/v1/admin/vehicles/{quote(plate)}", token=operator)
    assert vehicle.status == 200 and vehicle.body["seats"] == 45
    # pulled again: nothing new
    again = await api.post("/api/v1/admin/ministry/yunzheng-pulls", {}, token=operator)
    assert again.body["kinds"]["vehicles"]["rows"] == 0

    # a vehicle of a carrier nobody knows: refused whole, alerted, asked for again
    await sandbox(api, providers, "/_sandbox/yunzheng/changes", {"kind": "vehicles", "rows": [
        {"车牌号码": "粤B" + plate[2:], "客运企业代码": "NOSUCH", "厂牌型号": "金龙",
         "车辆等级": "mid", "核定载客数": "30"}]})
    refused = await api.post("/api/v1/admin/ministry/yunzheng-pulls", {}, token=operator)
    assert refused.body["kinds"]["vehicles"]["error"] == "IMPORT_REFUSED"
    assert await db.vehicles.find_one({"_id": "粤B" + plate[2:]}) is None
    alerts = await api.get("/api/v1/admin/alerts?kind=yunzheng_import_refused", token=operator)
    assert any(a["key"] == "yunzheng:vehicles" for a in alerts.body["alerts"])
    still = await api.post("/api/v1/admin/ministry/yunzheng-pulls", {}, token=operator)
    assert still.body["kinds"]["vehicles"]["error"] == "IMPORT_REFUSED"
    listed = await api.get("/api/v1/admin/ministry/yunzheng-pulls", token=operator)
    assert len(listed.body["pulls"]) >= 4

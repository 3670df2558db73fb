"""Imports of the 运政 system's files (issue 13, item 2): thousands of rows with planted
errors, as CSV (GB18030, Chinese headers) and XLSX (money in yuan); a dry run reports per
row and writes nothing; a file with a bad row writes nothing; a good one writes all, and
importing it again changes nothing. Also from a console: ``keyun import``."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook

from tests.booking_support import new_id
from tests.support import ROOT, ApiClient, keyun_env

ADMIN = "/api/v1/admin"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
HEADERS = ["从业资格证号", "姓名", "性别", "身份证号", "电话", "客运企业代码", "准驾车型",
           "诚信考核", "状态", "备注"]


def _drivers(count: int, prefix: str) -> list[list[str]]:
    rows = []
    for i in range(count):
        rows.append([f"{prefix}{i:05d}", f"驾驶员{i}", "男" if i % 2 else "女", new_id(),
                     f"139{i:08d}", "C44010001", "A1" if i % 3 else "B1", "AA", "正常",
                     "由运政系统导出"])
    return rows


def _csv(rows: list[list[Any]], headers: list[str] = HEADERS,
         encoding: str = "gb18030") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


async def _upload(api: ApiClient, token: str, kind: str, body: bytes, dry_run: bool,
                  media: str = "text/csv") -> Any:
    flag = "true" if dry_run else "false"
    return await api.request("POST", f"{ADMIN}/imports/{kind}?dry_run={flag}", raw=body,
                             token=token, headers={"Content-Type": media})


@pytest.mark.gen_test(timeout=300)
async def test_thousands_of_drivers_with_planted_errors(api: ApiClient, db) -> None:
    operator = (await api.login("operator"))["token"]
    prefix = "IMP" + uuid.uuid4().hex[:6].upper()
    rows = _drivers(3000, prefix)
    planted = {  # file row (header is row 1) → code
        103: "INVALID_ID_NUMBER", 504: "REFERENCE_NOT_FOUND", 1205: "INVALID_PHONE",
        2003: "DUPLICATE_ROW", 2502: "INVALID_VALUE", 2999: "MISSING_FIELD"}
    rows[101][3] = rows[101][3][:17] + ("0" if rows[101][3][17] != "0" else "1")
    rows[502][5] = "C00000000"
    rows[1203][4] = "1234"
    rows[2001][0] = rows[2][0]  # the same licence as row 4
    rows[2500][6] = "Z9"
    rows[2997][1] = ""  # no name
    body = _csv(rows)

    # the dry run named, so the page can show how far it has got while it waits
    work = f"test-{uuid.uuid4().hex}"
    seen: list[dict] = []
    upload = asyncio.ensure_future(api.request(
        "POST", f"{ADMIN}/imports/drivers?dry_run=true&progress={work}", raw=body, token=operator,
        headers={"Content-Type": "text/csv"}))
    while not upload.done():
        got = await api.get(f"{ADMIN}/progress/{work}", token=operator)
        if got.status == 200:
            seen.append(got.body)
        await asyncio.sleep(0.05)
    report = upload.result()
    assert report.status == 200, report.text
    final = (await api.get(f"{ADMIN}/progress/{work}", token=operator)).body
    assert final["phase"] == "writing" and final["done"] == final["total"] > 2900
    assert {s["phase"] for s in seen} <= {"reading", "checking", "writing"}
    checked = [s["done"] for s in seen if s["phase"] == "checking"]
    assert checked == sorted(checked)
    other = (await api.login("finance"))["token"]
    assert (await api.get(f"{ADMIN}/progress/{work}", token=other)).status == 404
    got = {e["row"]: e["code"] for e in report.body["errors"]}
    assert got == planted, got
    assert report.body["created"] == 3000 - len(planted)
    assert report.body["ignored_columns"] == ["备注"]
    assert await db.drivers.count_documents({"_id": {"$regex": f"^{prefix}"}}) == 0

    # for real, with the bad rows still in: refused as a whole, nothing written
    refused = await _upload(api, operator, "drivers", body, dry_run=False)
    assert refused.status == 422 and refused.error_code == "IMPORT_REFUSED", refused.text
    assert {e["row"] for e in refused.body["error"]["errors"]} == set(planted)
    assert await db.drivers.count_documents({"_id": {"$regex": f"^{prefix}"}}) == 0

    # the fixed file: every row in; the same file again: nothing changes
    good = [r for n, r in enumerate(rows, start=2) if n not in planted]
    done = await _upload(api, operator, "drivers", _csv(good), dry_run=False)
    assert done.status == 200, done.text
    assert (done.body["created"], done.body["updated"], done.body["errors"]) == (
        len(good), 0, [])
    assert await db.drivers.count_documents({"_id": {"$regex": f"^{prefix}"}}) == len(good)
    stored = await db.drivers.find_one({"_id": good[0][0]})
    assert good[0][3] not in str(stored) and stored["status"] == "active"
    assert stored["gender"] == "F" and stored["version"] == 1
    again = await _upload(api, operator, "drivers", _csv(good, encoding="utf-8-sig"),
                          dry_run=False)
    assert (again.body["created"], again.body["updated"], again.body["unchanged"]) == (
        0, 0, len(good))

    # one row changed: one update, its version up by one
    good[5][6] = "A2"
    changed = await _upload(api, operator, "drivers", _csv(good), dry_run=False)
    assert (changed.body["updated"], changed.body["unchanged"]) == (1, len(good) - 1)
    assert (await db.drivers.find_one({"_id": good[5][0]}))["version"] == 2
    audit = await db.audit.count_documents({"action": "drivers.import"})
    assert audit >= 2


def _xlsx(headers: list[str], rows: list[list[Any]]) -> bytes:
    book = Workbook()
    sheet = book.active
    sheet.append(headers)
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


@pytest.mark.gen_test(timeout=180)
async def test_fares_from_xlsx_in_yuan_and_files_that_cannot_be_read(api: ApiClient,
                                                                    db) -> None:
    operator = (await api.login("operator"))["token"]
    # fares of the demo's native routes as the demo made them (other tests change some)
    native = await db.stations.distinct("_id", {"system.vendor": "native"})
    routes = await db.routes.distinct("_id", {"origin_station_id": {"$in": native},
                                              "status": "active", "_id": {"$regex": "^R44"}})
    fares = [f for f in await db.fares.find({"route_id": {"$in": routes}}).sort(
                 "_id", 1).limit(600).to_list()
             if f["_id"] == f"{f['route_id']}-{f['from_seq']}-{f['to_seq']}"
             and max(f["prices"].values()) <= f["guide_price"]][:400]
    headers = ["线路代码", "上车站序号", "下车站序号", "政府指导价(元)", "执行票价(元)",
               "儿童票价(元)", "站务费(元)"]
    rows = [[f["route_id"], f["from_seq"], f["to_seq"], f["guide_price"] / 100,
             f["prices"]["adult"] / 100, f["prices"]["child"] / 100,
             f.get("station_fee", 0) / 100] for f in fares]
    rows[0][4] = round(rows[0][3] - 0.5, 2)  # an adult fare 0.50 yuan under the guide
    rows[7][4] = rows[7][3] + 1  # above the guide price
    rows[9][4] = "12.345"  # fractions of a fen
    report = await _upload(api, operator, "fares", _xlsx(headers, rows), dry_run=True,
                           media=XLSX)
    assert report.status == 200, report.text
    assert {e["row"]: e["code"] for e in report.body["errors"]} == {
        9: "FARE_ABOVE_GUIDE", 11: "INVALID_VALUE"}
    assert report.body["updated"] >= 1 and report.body["created"] == 0

    del rows[9], rows[7]
    done = await _upload(api, operator, "fares", _xlsx(headers, rows), dry_run=False,
                         media=XLSX)
    assert done.status == 200, done.text
    first = await db.fares.find_one({"_id": fares[0]["_id"]})
    assert first["prices"]["adult"] == fares[0]["guide_price"] - 50
    assert first["prices"]["student"] == fares[0]["prices"]["student"]  # not in the file

    for garbage in (b"PK\x03\x04 not really a zip", b"\xff\xfe\x00\x00", b""):
        bad = await _upload(api, operator, "fares", garbage, dry_run=True)
        assert bad.status == 422 and bad.error_code == "IMPORT_UNREADABLE", bad.text
    lacking = await _upload(api, operator, "fares", _csv([["R1", "0"]], ["线路代码", "上车站序号"]),
                            dry_run=True)
    assert lacking.status == 422 and lacking.error_code == "IMPORT_COLUMNS_MISSING"
    assert "下车站序号" in lacking.body["error"]["columns"]
    agent = (await api.login("agent"))["token"]
    denied = await _upload(api, agent, "fares", _xlsx(headers, rows), dry_run=True,
                           media=XLSX)
    assert denied.status == 403


def test_a_console_import_shows_progress_and_its_report(stores, seeded, tmp_path: Path) -> None:
    path = tmp_path / "drivers.csv"
    rows = _drivers(1200, "CLI" + uuid.uuid4().hex[:6].upper())
    rows[10][5] = "NOPE"
    path.write_bytes(_csv(rows))
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=stores.redis_url,
                    KEYUN_MONGO_DB=seeded)
    run = subprocess.run([sys.executable, "-m", "devstack.cli", "import", str(path),
                          "--kind", "drivers"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120, check=False)
    assert run.returncode == 1, run.stderr
    assert "1200/1200 rows checked" in run.stderr and "1000/1200" in run.stderr
    report = json.loads(run.stdout)
    assert report["dry_run"] is True and report["created"] == 1199
    assert [(e["row"], e["code"]) for e in report["errors"]] == [(12, "REFERENCE_NOT_FOUND")]


@pytest.mark.gen_test(timeout=120)
async def test_each_kind_imports_from_its_required_columns_alone(api: ApiClient, db) -> None:
    """A file with only the columns a kind needs creates records the database accepts (its
    defaults filled in as the API fills them), one kind after the other."""
    operator = (await api.login("operator"))["token"]
    tag = uuid.uuid4().hex[:6].upper()
    station, carrier, route = f"IS{tag}", f"IC{tag}", f"IR{tag}"
    files = [
        ("stations", ["客运站代码", "客运站名称", "客运站级别", "所属行政区划", "所在城市",
                      "经度", "纬度"], [station, "导入站", "3", "440106", "广州", "113.3", "23.1"]),
        ("carriers", ["客运企业代码", "客运企业名称", "所属行政区划", "经营许可证号"],
         [carrier, "导入客运公司", "440106", "440100000001"]),
        ("vehicles", ["车牌号码", "客运企业代码", "厂牌型号", "车辆等级", "核定载客数"],
         [f"粤A{tag[:5]}", carrier, "宇通ZK6122H", "high_1", "49"]),
        ("drivers", ["从业资格证号", "姓名", "客运企业代码", "准驾车型"],
         [f"ID{tag}", "导入司机", carrier, "A1"]),
        ("routes", ["线路代码", "线路名称", "线路等级", "线路类型", "起点站", "到达站", "总里程",
                    "经营企业"],
         [route, "导入线路", "class_3", "intercity", station, "440703001", "90", carrier]),
        ("stops", ["线路代码", "序号", "配客点名称", "客运站代码", "所在城市", "所属行政区划",
                   "里程"], [route, "0", "导入站", station, "广州", "440106", "0"],
         [route, "1", "江门汽车客运站", "440703001", "江门", "440703", "90"]),
        ("schedules", ["班次代码", "线路代码", "客运企业代码", "发车时间", "座位数"],
         [f"IS{tag}1", route, carrier, "08:15", "45"]),
        ("fares", ["线路代码", "上车站序号", "下车站序号", "政府指导价(元)", "执行票价(元)"],
         [route, "0", "1", "40", "36.5"]),
    ]
    for kind, headers, *rows in files:
        done = await _upload(api, operator, kind, _csv(rows, headers, "utf-8"), dry_run=False)
        assert done.status == 200 and done.body["created"] == len(rows), (kind, done.text)
    assert (await db.stations.find_one({"_id": station}))["system"]["vendor"] == "native"
    assert (await db.fares.find_one({"_id": f"{route}-0-1"}))["prices"]["adult"] == 3650
    planned = await db.departures.count_documents({"schedule_id": f"IS{tag}1"})
    assert planned > 0  # an imported timetable is planned like one added by hand

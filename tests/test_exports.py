"""Back-office exports as jobs with progress: finance exports a period of invoices too large
to download at once, watches the rows being read, downloads the file; nobody else sees it;
an export whose process dies reads as failed instead of running forever."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from tests.support import ApiClient, KeyunProcess, another_process

ROWS = 10_500  # more than a download answers at once (10,000)
# a period of its own, long before the invoices other tests make
SINCE = dt.datetime(2021, 3, 1, tzinfo=dt.UTC)
PERIOD = {"from": SINCE.isoformat(), "to": (SINCE + dt.timedelta(days=1)).isoformat()}


@pytest.fixture(scope="module")
def invoices(stores: Any, seeded: str) -> int:
    """ROWS issued invoices requested on one day of 2021, one a second."""
    from pymongo import MongoClient

    with MongoClient(stores.mongo_uri) as client:
        client[seeded].invoices.insert_many([{
            "_id": f"INVX{n:06d}", "order_no": f"KYX{n:08d}", "kind": "blue",
            "status": "issued", "current": True, "invoice_no": f"2021{n:016d}",
            "buyer": {"type": "personal", "title": f"乘客{n}"},
            "lines": [{"name": "*运输服务*旅客运输服务", "detail": "广州—佛山", "amount": 1250 + n,
                       "tax_rate": "免税"}],
            "total": 1250 + n, "requested_at": SINCE + dt.timedelta(seconds=n),
            "issued_at": SINCE + dt.timedelta(seconds=n)} for n in range(ROWS)])
    return ROWS


async def _until_finished(api: ApiClient, token: str, export_id: str) -> list[dict[str, Any]]:
    """The export's states as polled until it is no longer running."""
    seen = []
    for _ in range(600):
        got = await api.get(f"/api/v1/admin/exports/{export_id}", token=token)
        assert got.status == 200, got.text
        seen.append(got.body)
        if got.body["status"] != "running":
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"export {export_id} still running: {seen[-1]}")


@pytest.mark.gen_test(timeout=180)
async def test_finance_exports_a_large_period_as_a_job_and_watches_its_progress(
        api: ApiClient, invoices: int) -> None:
    finance = (await api.login("finance"))["token"]
    query = "&".join(f"{k}={v.replace('+', '%2B')}" for k, v in PERIOD.items())
    too_many = await api.get(f"/api/v1/admin/invoices.csv?{query}", token=finance)
    assert too_many.status == 422 and too_many.error_code == "EXPORT_TOO_LARGE"
    assert too_many.body["error"]["rows"] == invoices

    started = await api.post("/api/v1/admin/invoices/exports", {**PERIOD, "format": "xlsx"},
                             token=finance)
    assert started.status == 202, started.text
    export = started.body
    assert export["status"] == "running" and export["kind"] == "invoices"
    early = await api.get(f"/api/v1/admin/exports/{export['id']}/file", token=finance)
    assert early.status == 409 and early.error_code == "EXPORT_NOT_READY"

    seen = await _until_finished(api, finance, export["id"])
    done = seen[-1]
    assert done["status"] == "done", done
    assert done["rows"] == invoices and done["progress"] == {"done": invoices, "total": invoices}
    read = [s["progress"]["done"] for s in seen]
    assert read == sorted(read), "progress never goes back"
    assert all(s["progress"]["done"] <= s["progress"]["total"] for s in seen
               if s["progress"]["total"])

    got = await api.get(f"/api/v1/admin/exports/{export['id']}/file", token=finance)
    assert got.status == 200
    assert re.fullmatch(r'attachment; filename="invoices-\d{8}-\d{6}\.xlsx"; '
                        r"filename\*=UTF-8''invoices-\d{8}-\d{6}\.xlsx",
                        got.headers["Content-Disposition"]), got.headers["Content-Disposition"]
    assert len(got.raw) == done["size"]
    sheet = load_workbook(io.BytesIO(got.raw), read_only=True).active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:3] == ("发票号码", "开票日期", "类型") and len(rows) == invoices + 1
    newest = invoices - 1
    assert rows[1][0] == f"2021{newest:016d}" and rows[1][5] == f"乘客{newest}"
    assert round(rows[1][7] * 100) == 1250 + newest  # money in yuan
    listed = await api.get("/api/v1/admin/exports", token=finance)
    assert export["id"] in [e["id"] for e in listed.body["exports"]]
    # export clicked again and again: two run, the third is told to wait
    clicks = [await api.post("/api/v1/admin/invoices/exports", {**PERIOD, "format": "csv"},
                             token=finance) for _ in range(3)]
    assert [c.status for c in clicks] == [202, 202, 429], [c.text for c in clicks]
    assert clicks[2].error_code == "EXPORTS_BUSY"
    for click in clicks[:2]:
        assert (await _until_finished(api, finance, click.body["id"]))[-1]["status"] == "done"


@pytest.mark.gen_test(timeout=120)
async def test_an_export_is_its_requesters_alone(api: ApiClient, invoices: int) -> None:
    finance = (await api.login("finance"))["token"]
    operator = (await api.login("operator"))["token"]
    started = await api.post("/api/v1/admin/invoices/exports",
                             {**PERIOD, "status": "void", "format": "csv"}, token=finance)
    assert started.status == 202, started.text
    export_id = started.body["id"]
    for path in (f"/api/v1/admin/exports/{export_id}", f"/api/v1/admin/exports/{export_id}/file"):
        other = await api.get(path, token=operator)
        assert other.status == 404 and other.error_code == "EXPORT_NOT_FOUND"
    assert export_id not in [e["id"] for e in (await api.get(
        "/api/v1/admin/exports", token=operator)).body["exports"]]
    refused = await api.post("/api/v1/admin/invoices/exports", {"format": "csv"}, token=operator)
    assert refused.status == 403
    bad = await api.post("/api/v1/admin/invoices/exports", {"format": "pdf"}, token=finance)
    assert bad.status == 400
    # nothing matches (none of those invoices is void): a file of the header alone
    assert (await _until_finished(api, finance, export_id))[-1]["rows"] == 0
    got = await api.get(f"/api/v1/admin/exports/{export_id}/file", token=finance)
    rows = list(csv.reader(io.StringIO(got.raw.decode("utf-8-sig"))))
    assert len(rows) == 1 and rows[0][:2] == ["发票号码", "开票日期"]


@pytest.mark.gen_test(timeout=180)
async def test_an_export_whose_process_is_killed_reads_as_failed(
        api: ApiClient, db, keyun: KeyunProcess, workdir: Path, invoices: int) -> None:
    with another_process(keyun, workdir, "test_exports-2") as node:
        other = ApiClient(node.base_url)
        finance = (await other.login("finance"))["token"]
        started = await other.post("/api/v1/admin/invoices/exports",
                                   {**PERIOD, "format": "xlsx"}, token=finance)
        assert started.status == 202, started.text
        node.stop(signal.SIGKILL)
    export_id = started.body["id"]
    left = await api.get(f"/api/v1/admin/exports/{export_id}", token=finance)
    assert left.body["status"] == "running", "killed before it finished"
    # two minutes without a sign of life (the record's clock turned back, not the test's)
    await db.exports.update_one({"_id": export_id}, {"$set": {
        "heartbeat_at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)}})
    left = await api.get(f"/api/v1/admin/exports/{export_id}", token=finance)
    assert left.body["status"] == "failed"
    assert left.body["error"]["code"] == "EXPORT_ABANDONED"
    got = await api.get(f"/api/v1/admin/exports/{export_id}/file", token=finance)
    assert got.status == 409 and got.error_code == "EXPORT_FAILED"
    assert got.body["error"]["reason"] == "EXPORT_ABANDONED"

"""Exchange with the ministry's platform (部省数据交换, JT/T 979.4 in spirit) and with the
provincial 运政 system.

**Daily files.** For each day, once it is over: a zip of CSV files (UTF-8, a header row of
JT/T 979.2 data element names, money in yuan) — the base data changed that day (客运站,
客运企业, 车辆, 驾驶员, 班线, 班次计划, 票价: the labels of our 运政 import files, personal
data masked), the day's departures (班次), tickets sold (车票), refunds (退票), voids (废票)
and the statistics per station (统计) — with ``manifest.json`` (each file's element set,
rows and SHA-256) and ``manifest.sig`` (the manifest's HMAC-SHA256 under the shared secret).
The upload is signed too (:func:`signed_headers`). The platform answers with a receipt
counting the rows it read; our counts and its counts are reconciled, and a difference is an
alert. The format is documented in ``docs/ministry-exchange.md``.

**运政 changes.** The 运政 system serves its base data changes per kind as the files the
business-management import reads; a job pulls what changed since the last pull and imports
it through :meth:`BaseDataService.import_file` — the same code path, all or nothing per
file. A file with a refused row is not applied, raises an alert and is asked for again.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import logging
import secrets
import time
import zipfile
from typing import Any
from urllib.parse import quote

from pymongo.asynchronous.database import AsyncDatabase
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from server.clock import LOCAL_TZ, day_start, local_today, now_ms
from server.errors import DomainError
from server.security.pii import mask_name
from server.security.principal import OPERATOR, Principal
from server.services.alerts import AlertService
from server.services.audit import AuditService
from server.services.basedata import BaseDataService
from server.services.flow import FlowStats
from server.services.kinds import KINDS
from server.storage.ministry import MinistryRecords
from server.tables import yuan

log = logging.getLogger(__name__)

FORMAT = "keyun-jtt979-daily/1"
BASE_FILES = (("stations", "JC_KYZ.csv"), ("carriers", "JC_KYQY.csv"),
              ("vehicles", "JC_CL.csv"), ("drivers", "JC_JSY.csv"), ("routes", "JC_BX.csv"),
              ("schedules", "JC_BCJH.csv"), ("fares", "JC_PJ.csv"))
# the order a pull applies kinds in: what a record refers to comes first
PULL_ORDER = ("carriers", "stations", "vehicles", "drivers", "routes", "stops", "schedules",
              "fares")
DEPARTURE_COLUMNS = ("班次编号", "班次代码", "发车日期", "发车时间", "客运站代码", "班线编码",
                     "客运企业代码", "车辆编号", "座位数", "班次状态", "实际发车时间")
TICKET_COLUMNS = ("车票编号", "订单编号", "班次编号", "发车日期", "客运站代码", "班线编码",
                  "客运企业代码", "上车站序号", "下车站序号", "票种", "票价", "站务费", "售票渠道",
                  "售票点", "售票类型", "售票时间", "座位号", "乘车人姓名", "证件类型",
                  "证件号码", "里程")
REFUND_COLUMNS = ("车票编号", "订单编号", "班次编号", "退票时间", "退票金额", "退票手续费",
                  "退票原因")
VOID_COLUMNS = ("车票编号", "订单编号", "班次编号", "废票时间", "原因")
STATS_COLUMNS = ("统计日期", "客运站代码", "客运站名称", "发送旅客人数", "售票金额", "座位数",
                 "上座率", "发班次数", "计划班次数", "正点率", "正班率", "退票张数")
ELEMENT_SETS = {"BC.csv": "班次信息", "CP.csv": "车票信息", "TP.csv": "退票信息",
                "FP.csv": "废票信息", "TJ.csv": "统计分析信息",
                **{name: f"{KINDS[kind].label}信息" for kind, name in BASE_FILES}}
OPERATOR_VIEW = Principal("staff", "ministry-exchange", OPERATOR, username="部省交换")
YUNZHENG = Principal("staff", "yunzheng-sync", OPERATOR, username="运政同步")


def signed_headers(secret: str, platform: str, body: bytes) -> dict[str, str]:
    """The exchange's request signature: HMAC-SHA256 of code, timestamp, nonce and the
    body's SHA-256, one per line."""
    ts, nonce = str(int(time.time())), secrets.token_hex(12)
    text = "\n".join([platform, ts, nonce, hashlib.sha256(body).hexdigest()])
    return {"X-Platform-Code": platform, "X-Timestamp": ts, "X-Nonce": nonce,
            "X-Signature": hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()}


def _yuan(fen: Any) -> str:
    return yuan(int(fen or 0))


def _local(value: Any) -> str:
    return value.astimezone(LOCAL_TZ).isoformat(timespec="seconds") \
        if isinstance(value, dt.datetime) else ""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return _local(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bool):
        return "是" if value else "否"
    return str(value)


def csv_file(columns: tuple[str, ...] | list[str], rows: list[list[Any]]
             ) -> tuple[bytes, int]:
    """A CSV file (UTF-8, a header row) and how many rows it holds."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[_cell(v) for v in row] for row in rows])
    return out.getvalue().encode("utf-8"), len(rows)


class MinistryExchange:
    def __init__(self, db: AsyncDatabase[Any], basedata: BaseDataService, flow: FlowStats,
                 alerts: AlertService, audit: AuditService, *, api_base: str,
                 platform_code: str, secret: str) -> None:
        self._db = db
        self._basedata = basedata
        self._flow = flow
        self._alerts = alerts
        self._audit = audit
        self._base = api_base.rstrip("/")
        self._platform = platform_code
        self._secret = secret
        self.records = MinistryRecords(db)

    # --- daily files ----------------------------------------------------------------------------
    async def export(self, actor: Principal, day: dt.date, *, resend: bool = False
                     ) -> dict[str, Any]:
        """The day's files, built and sent once (again only with ``resend``); the export
        with its receipt and reconciliation."""
        if day >= local_today():
            raise DomainError("MINISTRY_DAY_OPEN", field="date")
        export_id = f"ME{day:%Y%m%d}"
        held = await self.records.get(export_id)
        if held and held["status"] == "acknowledged" and not resend:
            return self.view(held)
        if not await self.records.claim(export_id, day.isoformat(), now_ms()):
            raise DomainError("MINISTRY_EXPORT_RUNNING")
        try:
            files = await self._files(day)
            manifest, package = await asyncio.to_thread(self._package, day, files)
            await self.records.built(export_id, manifest, package)
            await self._audit.record(actor, "ministry.export", target=export_id,
                                     details={"date": day.isoformat(), "resend": resend})
            receipt, error = await self._send(package)
        except Exception:
            await self.records.release(export_id, "failed", "could not build the files")
            raise
        if receipt is None:
            await self.records.release(export_id, "failed", error)
            await self._alerts.raise_alert("ministry_export_failed", f"ministry:{export_id}",
                                           f"部省交换 {day} 上传失败：{error}",
                                           {"export": export_id})
        else:
            differences = reconcile(manifest, receipt)
            status = "mismatch" if differences else "acknowledged"
            await self.records.answered(export_id, status, receipt, differences)
            if differences:
                await self._alerts.raise_alert(
                    "ministry_count_mismatch", f"ministry:{export_id}",
                    f"部省交换 {day} 条数不一致：" + "；".join(
                        f"{d['file']} 报送 {d['sent']} 部级 {d['counted']}"
                        for d in differences), {"export": export_id})
            else:
                await self._alerts.ended(f"ministry:{export_id}", "acknowledged")
        return self.view(await self.records.get(export_id))

    async def daily(self, now: dt.datetime | None = None) -> None:
        """After 02:00: yesterday's files, once (a failed or mismatched export is retried)."""
        local = (now or now_ms()).astimezone(LOCAL_TZ)
        if local.hour < 2:
            return
        day = local.date() - dt.timedelta(days=1)
        held = await self.records.get(f"ME{day:%Y%m%d}")
        if held and held["status"] in ("acknowledged", "mismatch", "building"):
            return
        try:
            await self.export(OPERATOR_VIEW, day)
        except DomainError as exc:
            log.warning("ministry export not made", extra={"fields": {"code": exc.code}})

    async def get(self, export_id: str) -> dict[str, Any]:
        held = await self.records.get(export_id)
        if held is None:
            raise DomainError("NOT_FOUND")
        return self.view(held)

    async def package(self, export_id: str) -> tuple[str, bytes]:
        held = await self.records.get(export_id, with_package=True)
        if held is None or not held.get("package"):
            raise DomainError("NOT_FOUND")
        return f"{export_id}.zip", bytes(held["package"])

    async def listed(self, limit: int = 60) -> list[dict[str, Any]]:
        return [self.view(d) for d in await self.records.recent(limit)]

    @staticmethod
    def view(doc: dict[str, Any] | None) -> dict[str, Any]:
        doc = dict(doc or {})
        doc.pop("package", None)
        doc["id"] = doc.pop("_id", None)
        for key in ("created_at", "sent_at", "claimed_at", "answered_at"):
            if isinstance(doc.get(key), dt.datetime):
                doc[key] = doc[key].isoformat()
        return doc

    async def _files(self, day: dt.date) -> dict[str, tuple[bytes, int]]:
        start, end = day_start(day), day_start(day + dt.timedelta(days=1))
        files: dict[str, tuple[bytes, int]] = {}
        for kind, name in BASE_FILES:
            columns, rows = await self._basedata.changed_rows(KINDS[kind], start, end)
            files[name] = csv_file(["记录编号", *columns, "版本", "变更时间"], rows)
        deps = await self._db.departures.find({"service_date": day.isoformat()}).sort(
            "_id", 1).to_list()
        files["BC.csv"] = csv_file(DEPARTURE_COLUMNS, [[
            d["_id"], d.get("schedule_id", ""), d["service_date"],
            d["departs_at"].astimezone(LOCAL_TZ).strftime("%H:%M"), d["station_id"],
            d["route_id"], d.get("carrier_id", ""), d.get("vehicle_id", ""), d["seats"],
            d["status"], d.get("departed_at")] for d in deps])
        sold = await self._tickets({"issued_at": {"$gte": start, "$lt": end}})
        files["CP.csv"] = csv_file(TICKET_COLUMNS, await self._ticket_rows(sold))
        ended = await self._tickets({"refund.at": {"$gte": start, "$lt": end},
                                     "status": {"$in": ["refunded", "voided"]}})
        files["TP.csv"] = csv_file(REFUND_COLUMNS, [[
            t["ticket_no"], t["order_no"], t["departure_id"], t["refund"]["at"],
            _yuan(t["refund"].get("amount")), _yuan(t["refund"].get("fee")),
            t["refund"].get("reason", "")] for t in ended if t["status"] == "refunded"])
        files["FP.csv"] = csv_file(VOID_COLUMNS, [[
            t["ticket_no"], t["order_no"], t["departure_id"], t["refund"]["at"],
            t["refund"].get("reason", "")] for t in ended if t["status"] == "voided"])
        stats = await self._flow.stats(OPERATOR_VIEW, "station", day, day)
        files["TJ.csv"] = csv_file(STATS_COLUMNS, [[
            day.isoformat(), r["key"], r["name"], r["passengers"], _yuan(r["revenue"]),
            r["seats"], r["load_factor"], r["departures"], r["scheduled"], r["on_time_rate"],
            r["regular_run_rate"], r["refunds"]] for r in stats["rows"]])
        return files

    async def _tickets(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._db.tickets.find(query).sort("ticket_no", 1).to_list()

    async def _ticket_rows(self, tickets: list[dict[str, Any]]) -> list[list[Any]]:
        orders = {o["order_no"]: o async for o in self._db.orders.find(
            {"order_no": {"$in": sorted({t["order_no"] for t in tickets})}},
            {"order_no": 1, "channel": 1, "outlet_id": 1, "partner_id": 1})}
        deps = {d["_id"]: d async for d in self._db.departures.find(
            {"_id": {"$in": sorted({t["departure_id"] for t in tickets})}},
            {"service_date": 1, "station_id": 1, "route_id": 1, "carrier_id": 1})}
        rows = []
        for t in tickets:
            order, dep = orders.get(t["order_no"], {}), deps.get(t["departure_id"], {})
            who = t["passenger"]
            rows.append([
                t["ticket_no"], t["order_no"], t["departure_id"], dep.get("service_date", ""),
                dep.get("station_id", ""), dep.get("route_id", ""), dep.get("carrier_id", ""),
                t.get("from_seq", ""), t.get("to_seq", ""), t["ticket_type"], _yuan(t["price"]),
                _yuan(t.get("station_fee")), order.get("channel", ""),
                order.get("outlet_id") or order.get("partner_id") or "",
                "改签" if t.get("changed_from") else "售票", t["issued_at"], t.get("seat") or "",
                mask_name(who.get("name", "")), who.get("id_type", ""),
                who.get("id_no_masked", ""), t.get("distance_km", "")])
        return rows

    def _package(self, day: dt.date, files: dict[str, tuple[bytes, int]]
                 ) -> tuple[dict[str, Any], bytes]:
        manifest = {"format": FORMAT, "platform": self._platform, "date": day.isoformat(),
                    "generated_at": now_ms().isoformat(),
                    "files": [{"name": name, "element_set": ELEMENT_SETS[name], "rows": rows,
                               "sha256": hashlib.sha256(body).hexdigest()}
                              for name, (body, rows) in files.items()]}
        manifest_bytes = json.dumps(manifest, ensure_ascii=False, indent=1).encode()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as package:
            package.writestr("manifest.json", manifest_bytes)
            package.writestr("manifest.sig", hmac.new(self._secret.encode(), manifest_bytes,
                                                      hashlib.sha256).hexdigest())
            for name, (body, _rows) in files.items():
                package.writestr(name, body)
        return manifest, out.getvalue()

    async def _send(self, package: bytes) -> tuple[dict[str, Any] | None, str]:
        try:
            resp = await AsyncHTTPClient().fetch(HTTPRequest(
                f"{self._base}/ministry/v1/exchange/daily", method="POST", body=package,
                headers={"Content-Type": "application/zip",
                         **signed_headers(self._secret, self._platform, package)},
                request_timeout=60))
            answer = json.loads(resp.body)
        except HTTPClientError as exc:
            detail = exc.response.body.decode(errors="replace")[:300] if exc.response else ""
            return None, f"HTTP {exc.code} {detail}".strip()
        except (OSError, ValueError) as exc:
            return None, str(exc)[:300]
        if answer.get("code") != "0":
            return None, f"{answer.get('code')} {answer.get('message', '')}".strip()
        return answer, ""

    # --- 运政 changes ---------------------------------------------------------------------------
    async def pull_base_data(self, actor: Principal = YUNZHENG) -> dict[str, Any]:
        """Each kind's changes since the last pull, imported; the pull's report."""
        report: dict[str, Any] = {"kinds": {}, "at": now_ms().isoformat()}
        for kind in PULL_ORDER:
            since = await self.records.cursors.get(f"yunzheng:{kind}")
            url = f"{self._base}/yunzheng/v1/changes/{kind}.csv"
            if since:
                url += "?since=" + quote(since.isoformat())
            try:
                resp = await AsyncHTTPClient().fetch(HTTPRequest(
                    url, headers=signed_headers(self._secret, self._platform, b""),
                    request_timeout=30))
            except (HTTPClientError, OSError) as exc:
                report["kinds"][kind] = {"error": str(exc)[:200]}
                continue
            until = dt.datetime.fromisoformat(resp.headers.get("X-Changes-Until")
                                              or now_ms().isoformat())
            if not resp.body.strip():
                await self.records.cursors.advance(f"yunzheng:{kind}", until)
                report["kinds"][kind] = {"rows": 0}
                continue
            try:
                done = await self._basedata.import_file(actor, KINDS[kind], resp.body,
                                                        dry_run=False)
            except DomainError as exc:
                report["kinds"][kind] = {"error": exc.code, "details": exc.details}
                await self._alerts.raise_alert(
                    "yunzheng_import_refused", f"yunzheng:{kind}",
                    f"运政{KINDS[kind].label}变更未能导入：{exc.message}",
                    {"kind": kind, "code": exc.code})
                continue
            await self.records.cursors.advance(f"yunzheng:{kind}", until)
            await self._alerts.ended(f"yunzheng:{kind}", "imported")
            report["kinds"][kind] = {k: done[k] for k in ("rows", "created", "updated",
                                                          "unchanged")}
        await self.records.pulled(report)
        return report


def reconcile(manifest: dict[str, Any], receipt: dict[str, Any]) -> list[dict[str, Any]]:
    """Files whose rows the platform counted differently from what we sent."""
    counted = {f["name"]: int(f["rows"]) for f in receipt.get("files", [])}
    return [{"file": f["name"], "sent": f["rows"], "counted": counted.get(f["name"])}
            for f in manifest["files"] if counted.get(f["name"]) != f["rows"]]

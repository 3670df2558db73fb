"""Settlement (结算): who is owed what, netted per entity on a T+N cycle, with statements.

Settlement entities are every carrier, station, agent outlet, partner platform and payment
provider, and the platform itself; each has its ledger account (its id, e.g.
``carrier:C001``), a cycle T+N (N from 0 to 7 days; 1 unless finance says otherwise) and
bank details (the account number encrypted at rest, masked when shown).

A batch settles *through* a closed day D: for each entity, the journal entries booked after
what its last batch covered, up to D − N, net to what the platform owes it (or it owes the
platform); the batch posts a payout entry per entity (``payout:<batch>:<entity>``: the
entity's account back to zero for that period, the bank account the other side) and keeps
per-entity totals — Table 4-1's 对账信息 (sales, refunds, sale and refund fees) and 结算信息
(settlement code, date, amount). A batch of a day exists once across processes: a second run
for the same day adds nothing; a runner that died is taken over where it stopped (entities
already done are skipped, payouts are posted by id). A day is settled only once it is
reconciled: no difference open, and a run of every provider's bill and station system's
sales report whose money the day's entries moved.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import secrets
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ, local_today, now_ms
from server.errors import DomainError, calendar_day
from server.paging import FIRST_PAGE, Page
from server.security.pii import PiiVault
from server.security.principal import Principal
from server.services.audit import AuditService
from server.services.ledger import BANK, Ledger
from server.storage.settlement import SettlementRecords
from server.tables import yuan

KINDS = ("carrier", "station", "outlet", "partner", "provider", "platform")
KIND_NAMES = {"carrier": "客运企业", "station": "客运站", "outlet": "代售点", "partner": "分销平台",
              "provider": "支付机构", "platform": "平台运营方"}
ENTRY_NAMES = {"sale": "售票", "change": "改签", "ticket_refund": "退票", "ticket_void": "废票",
               "cancellation_refund": "停班退票", "payout": "结算付款", "adjustment": "调账",
               "refund_fee": "退票手续费"}
DEFAULT_CYCLE = 1
STALE = dt.timedelta(minutes=2)  # a runner silent this long has died


def _mask_account(number: str) -> str:
    return f"{'*' * max(0, len(number) - 4)}{number[-4:]}"


class Settlement:
    def __init__(self, db: AsyncDatabase[Any], ledger: Ledger, vault: PiiVault,
                 audit: AuditService, providers: list[str]) -> None:
        self._db = db
        self._ledger = ledger
        self._vault = vault
        self._audit = audit
        self._providers = providers
        self.records = SettlementRecords(db)
        self._runner = secrets.token_hex(6)  # this process (a batch's owner says which)

    # --- entities -----------------------------------------------------------------------------
    async def _parties(self, relationships: bool = False) -> dict[str, dict[str, Any]]:
        """Every party money can be owed to, from the base data (with the routes and stations
        each carrier runs, when asked: that reads every schedule)."""
        parties: dict[str, dict[str, Any]] = {}
        runs: dict[str, list[dict[str, Any]]] = {}
        if relationships:
            async for sch in self._db.schedules.find({}, {"route_id": 1, "station_id": 1,
                                                          "carrier_id": 1}):
                pair = {"route_id": sch["route_id"], "station_id": sch["station_id"]}
                if pair not in runs.setdefault(sch["carrier_id"], []):
                    runs[sch["carrier_id"]].append(pair)
        async for carrier in self._db.carriers.find({}, {"name": 1}):
            parties[f"carrier:{carrier['_id']}"] = {
                "name": carrier.get("name", carrier["_id"]),
                "relationships": runs.get(carrier["_id"], [])}
        async for station in self._db.stations.find({}, {"name": 1}):
            parties[f"station:{station['_id']}"] = {"name": station.get("name", station["_id"])}
        async for outlet in self._db.outlets.find({}, {"name": 1}):
            parties[f"outlet:{outlet['_id']}"] = {"name": outlet.get("name", outlet["_id"])}
        async for partner in self._db.partners.find({}, {"name": 1}):
            parties[f"partner:{partner['_id']}"] = {"name": partner.get("name", partner["_id"])}
        for provider in self._providers:
            parties[f"provider:{provider}"] = {"name": provider}
        parties["platform:keyun"] = {"name": "客运联网售票平台"}
        return parties

    async def entities(self, kind: str | None = None, text: str | None = None,
                       page: Page = FIRST_PAGE) -> tuple[list[dict[str, Any]], int]:
        """A page of the settlement entities (of a kind; whose account or name has
        ``text``), by account, and how many match."""
        parties = await self._parties(relationships=True)
        settings = await self.records.entity_settings()
        balances = {a["account"]: a["balance"] for a in await self._ledger.accounts()}
        out = []
        for entity_id in sorted(set(parties) | set(settings)):
            if kind and not entity_id.startswith(f"{kind}:"):
                continue
            row = self._view(entity_id, parties.get(entity_id, {}),
                             settings.get(entity_id, {}), balances.get(entity_id, 0))
            if _has(text, row["id"], row["name"]):
                out.append(row)
        return page.cut(out)

    def _view(self, entity_id: str, party: dict[str, Any], saved: dict[str, Any],
              balance: int) -> dict[str, Any]:
        kind, _, ref = entity_id.partition(":")
        bank = saved.get("bank") or {}
        return {"id": entity_id, "kind": kind, "kind_name": KIND_NAMES.get(kind, kind),
                "ref": ref, "name": party.get("name") or saved.get("name") or ref,
                "cycle_days": int(saved.get("cycle_days", DEFAULT_CYCLE)),
                "bank": {"bank_name": bank.get("bank_name", ""),
                         "account_name": bank.get("account_name", ""),
                         "account_no": bank.get("account_no_masked", "")},
                "relationships": party.get("relationships", []),
                # what the platform owes it now (a credit balance of its account)
                "balance": -balance}

    async def save_entity(self, actor: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """An entity's settlement terms: its cycle T+N and its bank account."""
        entity_id = str(body.get("id", ""))
        parties = await self._parties(relationships=True)
        if entity_id not in parties:
            raise DomainError("REFERENCE_NOT_FOUND", f"No such settlement entity: {entity_id!r}.",
                              field="id")
        fields: dict[str, Any] = {"updated_at": now_ms(), "updated_by": actor.audit_actor()}
        if "cycle_days" in body:
            fields["cycle_days"] = int(body["cycle_days"])
        if body.get("bank"):
            bank = body["bank"]
            number = str(bank.get("account_no", ""))
            fields["bank"] = {"bank_name": bank.get("bank_name", ""),
                              "account_name": bank.get("account_name", ""),
                              "account_no_enc": self._vault.encrypt("bank_account", number),
                              "account_no_masked": _mask_account(number)}
        saved = await self.records.save_entity(entity_id, fields)
        await self._audit.record(actor, "settlement.entity", target=entity_id, details={
            "cycle_days": saved.get("cycle_days", DEFAULT_CYCLE),
            "bank": (saved.get("bank") or {}).get("account_no_masked", "")})
        balances = {a["account"]: a["balance"] for a in await self._ledger.accounts(entity_id)}
        return self._view(entity_id, parties[entity_id], saved, balances.get(entity_id, 0))

    # --- batches ------------------------------------------------------------------------------
    async def run(self, actor: Principal, through_date: str) -> dict[str, Any]:
        """Settle through a closed day, once. The batch as it stands."""
        through = calendar_day(through_date, code="INVALID_VALUE", field="through_date")
        if through >= local_today():
            raise DomainError("SETTLEMENT_DAY_OPEN", through_date=through_date)
        day = through.isoformat()
        batch_id = f"SB{through:%Y%m%d}"
        open_diffs = await self._db.reconciliation_runs.count_documents(
            {"date": {"$lte": day}, "open_differences": {"$gt": 0}})
        if open_diffs:
            raise DomainError("RECONCILIATION_OPEN", runs=open_diffs)
        if await self.records.get(batch_id) is None:  # (a batch begun is seen through)
            if await self.records.later_than(day) is not None:
                raise DomainError("SETTLEMENT_OUT_OF_ORDER", through_date=through_date)
            await self._reconciled(through)
        now = now_ms()
        opened = await self.records.open_batch({
            "_id": batch_id, "through_date": day, "status": "running", "entities": [],
            "progress": {"done": 0, "total": 0}, "created_at": now,
            "created_by": actor.audit_actor(), "owner": None, "heartbeat_at": now})
        if opened:
            await self._audit.record(actor, "settlement.run", target=batch_id)
        if await self.records.claim(batch_id, f"{self._runner}:{secrets.token_hex(4)}",
                                    now - STALE, now):
            await self._settle(batch_id, through)
        return await self.batch(batch_id)

    async def _reconciled(self, through: dt.date) -> None:
        """The gate before a batch: each payment provider and station system whose money
        the entries it settles moved has a reconciliation run of their day."""
        _, periods, _ = await self._periods(through)
        if not periods:
            return
        low = min(since for _, since, _ in periods.values())
        booked: dict[str, str] = {"$lte": max(covered for _, _, covered in periods.values())}
        if low:
            booked["$gt"] = low
        moved = await self._ledger.book.sources_by_day(booked)
        systems = set(await self._db.stations.distinct("_id", {
            "_id": {"$in": sorted({s for _, _, s in moved if s})},
            "system.vendor": {"$nin": ["native", None]}}))
        needed = {(p, d) for d, p, _ in moved if p in self._providers}
        needed |= {(f"station:{s}", d) for d, _, s in moved if s in systems}
        if not needed:
            return
        done = {(r["source"], r["date"]) async for r in self._db.reconciliation_runs.find(
            {"date": {"$in": sorted({d for _, d in needed})}}, {"source": 1, "date": 1})}
        missing = sorted(needed - done, key=lambda sd: (sd[1], sd[0]))
        if missing:
            raise DomainError("RECONCILIATION_MISSING", missing=[
                {"source": source, "date": date} for source, date in missing[:20]],
                count=len(missing))

    async def _periods(self, through: dt.date) -> tuple[
            set[str], dict[str, tuple[int, str, str]], dict[str, dict[str, Any]]]:
        """Every entity a batch through ``through`` settles, its period (cycle, after what
        its last batch covered, through D − N) and its terms."""
        previous = await self.records.latest_before(through.isoformat())
        covered_before = {e["entity"]: e["covered_through"]
                          for e in (previous or {}).get("entities", [])}
        settings = await self.records.entity_settings()
        # every party the base data knows, and any other entity the journal owes (a carrier
        # withdrawn since still gets what it earned)
        owed = {a["account"] for a in await self._ledger.accounts()
                if a["account"].split(":", 1)[0] in KINDS}
        entities = set(await self._parties()) | set(settings) | owed
        periods = {}
        for entity_id in entities:
            cycle = int(settings.get(entity_id, {}).get("cycle_days", DEFAULT_CYCLE))
            periods[entity_id] = (cycle, covered_before.get(entity_id, ""),
                                  (through - dt.timedelta(days=cycle)).isoformat())
        return entities, periods, settings

    async def _settle(self, batch_id: str, through: dt.date) -> None:
        batch = await self.records.get(batch_id) or {}
        done = {e["entity"] for e in batch.get("entities", [])}
        entities, periods, settings = await self._periods(through)
        count = len(done)
        await self.records.sized(batch_id, len(entities))
        summaries = await self._summarize({e: p[1:] for e, p in periods.items()})
        for entity_id in sorted(entities):
            cycle, since, covered = periods[entity_id]
            summary = summaries.get(entity_id)
            if entity_id in done or summary is None:
                continue
            summary.update(entity=entity_id, cycle_days=cycle, covered_from=since,
                           covered_through=covered,
                           settlement_code=f"{batch_id}-{entity_id}",
                           settlement_date=local_today().isoformat(),
                           # the bank account paid, as it was when settled (re-exports agree)
                           payee=settings.get(entity_id, {}).get("bank") or {})
            if summary["amount"]:
                await self._ledger.book.post({
                    "_id": f"payout:{batch_id}:{entity_id}", "kind": "payout",
                    "postings": [{"account": entity_id, "amount": summary["amount"]},
                                 {"account": BANK, "amount": -summary["amount"]}],
                    "at": now_ms(), "booked_on": local_today().isoformat(),
                    "event_at": now_ms(), "batch": batch_id})
            count += 1
            await self.records.progress(batch_id, summary, count, now_ms())
        batch = await self.records.get(batch_id) or {}
        rows = batch.get("entities", [])
        await self.records.finish(batch_id, {
            "entities": len(rows), "payable": sum(r["amount"] for r in rows if r["amount"] > 0),
            "receivable": -sum(r["amount"] for r in rows if r["amount"] < 0),
            "lines": sum(r["lines"] for r in rows)}, now_ms())

    def _period(self, entity_id: str, since: str, covered: str) -> dict[str, Any]:
        booked: dict[str, str] = {"$lte": covered}
        if since:
            booked["$gt"] = since
        return {"postings.account": entity_id, "booked_on": booked, "kind": {"$ne": "payout"}}

    async def _summarize(self, periods: dict[str, tuple[str, str]]
                         ) -> dict[str, dict[str, Any]]:
        """对账信息 of every entity for its period (after ``since``, through ``covered``):
        sales, refunds, refund fees, adjustments, the net owed, its posting lines and the
        rule versions behind them — summed by the database in one pass over the batch's
        days."""
        if not periods:
            return {}
        low = min(since for since, _ in periods.values())
        booked: dict[str, str] = {"$lte": max(covered for _, covered in periods.values())}
        if low:
            booked["$gt"] = low
        rows = await self._ledger.book.summed_by_account(booked, list(periods))
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            since, covered = periods[row["account"]]
            if not since < row["booked_on"] <= covered:
                continue
            got = out.setdefault(row["account"], {
                "sales": 0, "refunds": 0, "refund_fees": 0, "adjustments": 0, "lines": 0,
                "amount": 0, "rule_versions": set()})
            own = -int(row["sum"])
            got["lines"] += int(row["count"])
            got["amount"] += own
            if row.get("rule_version"):
                got["rule_versions"].add(row["rule_version"])
            if row.get("role") == "fee":
                got["refund_fees"] += own
            elif row["kind"] in ("sale", "change"):
                got["sales"] += own
            elif row["kind"] in ("ticket_refund", "ticket_void", "cancellation_refund"):
                got["refunds"] += own
            else:
                got["adjustments"] += own
        for got in out.values():
            got["rule_versions"] = sorted(got["rule_versions"])
        return out

    async def batch(self, batch_id: str) -> dict[str, Any]:
        batch = await self.records.get(batch_id)
        if batch is None:
            raise DomainError("NOT_FOUND", "No such settlement batch.")
        return batch_view(batch)

    async def batch_entities(self, batch_id: str, text: str | None, page: Page
                             ) -> tuple[list[dict[str, Any]], int]:
        """A page of what a batch settled per entity (whose account has ``text``)."""
        rows = (await self.batch(batch_id))["entities"]
        return page.cut([r for r in rows if _has(text, r["entity"])])

    async def batches(self, page: Page) -> tuple[list[dict[str, Any]], int]:
        """A page of batches, the latest day first, and how many there are."""
        rows, total = await self.records.listed(page)
        return [batch_view(b) for b in rows], total

    # --- payouts ----------------------------------------------------------------------------
    async def payouts(self, batch_id: str) -> dict[str, Any]:
        """A batch's payout instructions (付款指令): each entity the platform owes, to the
        bank account it had when settled, and who cannot be paid yet (no bank account) or
        owes the platform (collected, not paid)."""
        batch = await self.records.get(batch_id)
        if batch is None:
            raise DomainError("NOT_FOUND", "No such settlement batch.")
        if batch["status"] != "done":
            raise DomainError("SETTLEMENT_RUNNING")
        parties = await self._parties()
        lines, unpaid, receivable = [], [], []
        for row in batch.get("entities", []):
            name = parties.get(row["entity"], {}).get("name", row["entity"])
            if row["amount"] < 0:
                receivable.append({"entity": row["entity"], "name": name,
                                   "amount": -row["amount"]})
                continue
            payee = row.get("payee") or {}
            if row["amount"] == 0:
                continue
            if not payee.get("account_no_enc"):
                unpaid.append({"entity": row["entity"], "name": name, "amount": row["amount"]})
                continue
            lines.append({"seq": len(lines) + 1, "entity": row["entity"], "name": name,
                          "bank_name": payee.get("bank_name", ""),
                          "account_name": payee.get("account_name", ""),
                          "account_no": payee.get("account_no_masked", ""),
                          "account_no_enc": payee["account_no_enc"], "amount": row["amount"],
                          "settlement_code": row["settlement_code"],
                          "purpose": f"客运结算 {batch['through_date']}"})
        return {"batch": batch_id, "through_date": batch["through_date"],
                "count": len(lines), "amount": sum(ln["amount"] for ln in lines),
                "lines": lines, "no_bank_account": unpaid, "receivable": receivable}

    async def payout_file(self, actor: Principal, batch_id: str) -> tuple[str, bytes]:
        """The bank's batch transfer file (批量付款文件) of a batch: full account numbers,
        so finance alone, and every export audited."""
        payouts = await self.payouts(batch_id)
        for line in payouts["lines"]:
            line["account_no"] = self._vault.decrypt("bank_account", line["account_no_enc"])
        await self._audit.record(actor, "settlement.payout_file", target=batch_id, details={
            "count": payouts["count"], "amount": payouts["amount"]})
        return f"{batch_id}-payouts.csv", payout_csv(payouts)

    # --- statements ---------------------------------------------------------------------------
    async def statement(self, batch_id: str, entity_id: str) -> dict[str, Any]:
        """One entity's statement of a batch: header, lines, totals."""
        batch = await self.records.get(batch_id)
        row = next((e for e in (batch or {}).get("entities", [])
                    if e["entity"] == entity_id), None)
        if batch is None or row is None:
            raise DomainError("NOT_FOUND", "No such statement.")
        parties = await self._parties()
        lines = []
        async for entry in self._ledger.book.find(
                self._period(entity_id, row["covered_from"], row["covered_through"])):
            sale = (entry.get("ticket") or {}).get("sale") or {}
            for posting in entry["postings"]:  # a line per posting: a fee's share apart
                if posting["account"] != entity_id:
                    continue
                kind = "refund_fee" if posting.get("role") == "fee" else entry["kind"]
                lines.append({"booked_on": entry["booked_on"], "entry": entry["_id"],
                              "kind": ENTRY_NAMES.get(kind, kind),
                              "order_no": entry.get("order_no") or "",
                              "ticket_no": entry.get("ticket_no") or "",
                              "seller": sale.get("seller") or sale.get("channel", ""),
                              "source": sale.get("station_id", ""),
                              "rule_version": entry.get("rule_version") or "",
                              "amount": -posting["amount"]})
        return {"batch": batch_id, "through_date": batch["through_date"],
                "entity": entity_id, "name": parties.get(entity_id, {}).get("name", entity_id),
                **{k: row[k] for k in ("cycle_days", "covered_from", "covered_through",
                                       "settlement_code", "settlement_date", "sales",
                                       "refunds", "refund_fees", "adjustments", "amount",
                                       "rule_versions")},
                "lines": lines}


# 对账信息 of table 4-1: seller (售票方), ticket source (票源), sales, refunds and their fees
STATEMENT_COLUMNS = (("booked_on", "记账日期"), ("entry", "分录号"), ("kind", "业务类型"),
                     ("order_no", "订单号"), ("ticket_no", "票号"), ("seller", "售票方"),
                     ("source", "票源"), ("rule_version", "清分规则版本"),
                     ("amount", "金额（元）"))


def statement_header(s: dict[str, Any]) -> list[tuple[str, str]]:
    return [("结算批次", s["batch"]), ("结算编码", s["settlement_code"]),
            ("结算单位", f"{s['name']}（{s['entity']}）"), ("结算周期", f"T+{s['cycle_days']}"),
            ("期间", f"{s['covered_from'] or '开始'} 之后 至 {s['covered_through']}"),
            ("结算日期", s["settlement_date"]),
            ("清分规则版本", "、".join(s["rule_versions"]) or "—")]


def statement_totals(s: dict[str, Any]) -> list[tuple[str, int]]:
    return [("售票", s["sales"]), ("退票", s["refunds"]), ("退票手续费", s["refund_fees"]),
            ("调账", s["adjustments"]), ("应结金额", s["amount"])]


def statement_csv(s: dict[str, Any]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    for name, value in statement_header(s):
        writer.writerow([name, value])
    writer.writerow([])
    writer.writerow([title for _, title in STATEMENT_COLUMNS])
    for line in s["lines"]:
        writer.writerow([yuan(line[k]) if k == "amount" else line[k]
                         for k, _ in STATEMENT_COLUMNS])
    writer.writerow([])
    for name, fen in statement_totals(s):
        writer.writerow([name, yuan(fen)])
    return ("\ufeff" + out.getvalue()).encode("utf-8")  # a BOM: spreadsheets read it as UTF-8


PAYOUT_COLUMNS = (("seq", "序号"), ("account_no", "收款账号"), ("account_name", "收款户名"),
                  ("bank_name", "收款开户行"), ("amount", "金额（元）"), ("purpose", "用途"),
                  ("settlement_code", "结算编码"))


def payout_csv(p: dict[str, Any]) -> bytes:
    """批量付款文件: a header line (batch, count, total), then a line per payee."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["批次号", p["batch"], "总笔数", p["count"], "总金额", yuan(p["amount"])])
    writer.writerow([title for _, title in PAYOUT_COLUMNS])
    for line in p["lines"]:
        writer.writerow([yuan(line[k]) if k == "amount" else line[k]
                         for k, _ in PAYOUT_COLUMNS])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def statement_xlsx(s: dict[str, Any]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    sheet = book.active
    sheet.title = "结算单"
    bold = Font(bold=True)
    for name, value in statement_header(s):
        sheet.append([name, value])
        sheet.cell(sheet.max_row, 1).font = bold
    sheet.append([])
    sheet.append([title for _, title in STATEMENT_COLUMNS])
    for cell in sheet[sheet.max_row]:
        cell.font = bold
    for line in s["lines"]:
        sheet.append([line[k] / 100 if k == "amount" else line[k]
                      for k, _ in STATEMENT_COLUMNS])
        sheet.cell(sheet.max_row, len(STATEMENT_COLUMNS)).number_format = "0.00"
    sheet.append([])
    for name, fen in statement_totals(s):
        sheet.append([name, fen / 100])
        sheet.cell(sheet.max_row, 1).font = bold
        sheet.cell(sheet.max_row, 2).number_format = "0.00"
    for column, width in zip("ABCDEFGHI", (14, 34, 10, 22, 22, 16, 12, 20, 12), strict=True):
        sheet.column_dimensions[column].width = width
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _has(text: str | None, *values: str) -> bool:
    """No text asked for, or one of ``values`` has it (any case)."""
    return not text or any(text.casefold() in (v or "").casefold() for v in values)


def batch_view(batch: dict[str, Any]) -> dict[str, Any]:
    return {"id": batch["_id"], "through_date": batch["through_date"],
            "status": batch["status"], "progress": batch.get("progress", {}),
            "totals": batch.get("totals", {}),
            "created_at": batch["created_at"].astimezone(LOCAL_TZ).isoformat(),
            "finished_at": batch["finished_at"].astimezone(LOCAL_TZ).isoformat()
            if batch.get("finished_at") else None,
            "entities": [{k: e[k] for k in (
                "entity", "cycle_days", "covered_from", "covered_through", "settlement_code",
                "settlement_date", "sales", "refunds", "refund_fees", "adjustments", "lines",
                "amount", "rule_versions")} for e in batch.get("entities", [])]}

"""Reconciliation (对账): a day of a provider's bill against our payments and refunds.

Totals first (counts and sums of payments and refunds on each side), then line by line:
payment rows by ``out_trade_no`` against our paid attempts, refund rows by ``out_refund_no``
against our refunds that are done — a refund row is a refund, never an unknown payment.
Ours are read over the day widened by a tolerance either side, so a payment the provider
books just across midnight from us is matched, not reported twice; a line of theirs that
matches nothing of ours in the window is looked up by its number before it is called
unknown. A day without trades is an empty, clean run.

Each difference is classified — ``only_ours``, ``only_theirs``, ``amount_differs``,
``status_differs`` — and kept until finance resolves it: ``adjust`` posts an adjusting
ledger entry (the provider's funds against ``suspense:reconciliation``, by the amount the
provider's side differs; for a station's sales report, the settlement entity finance
names against suspense, settled in its next batch), ``accept`` records why none is
needed. Both are audited; the settlement of a day waits for its open differences, and for
a run of every source whose money the day's entries moved.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from payments.base import BasePaymentProvider, PaymentError, ProviderRegistry
from server.clock import LOCAL_TZ, day_start, local_today, now_ms
from server.errors import DomainError, calendar_day
from server.exchange.errors import ExchangeError
from server.exchange.registry import ExchangeRegistry
from server.paging import Page
from server.security.principal import Principal
from server.services.audit import AuditService
from server.services.ledger import SUSPENSE, Ledger
from server.services.settlement import KINDS
from server.storage.reconciliation import ReconciliationRecords
from server.storage.transactions import transact

log = logging.getLogger(__name__)

TOLERANCE = dt.timedelta(minutes=10)
PAID = ["paid", "refunding", "refunded"]
AUTO_AFTER_HOUR = 10  # providers publish a day's bills by the next morning


class Reconciliation:
    def __init__(self, db: AsyncDatabase[Any], providers: ProviderRegistry, ledger: Ledger,
                 audit: AuditService, exchanges: ExchangeRegistry | None = None) -> None:
        self._db = db
        self._exchanges = exchanges
        self._providers = providers
        self._ledger = ledger
        self._audit = audit
        self.records = ReconciliationRecords(db)

    def bill_sources(self) -> list[str]:
        return self._providers.remote()

    async def run(self, actor: Principal | None, date: str, source: str,
                  run_id: str | None = None) -> dict[str, Any]:
        day = calendar_day(date, code="INVALID_VALUE", field="date")
        if source.startswith("station:"):
            if day >= local_today():
                raise DomainError("STATEMENT_NOT_READY", bill_date=date)
            lines_seen, matched, totals, found = await self._station(day, source[8:])
            return await self._keep(actor, day, source, run_id, lines_seen, matched, totals,
                                    found)
        provider = self._providers.find(source)
        if not isinstance(provider, BasePaymentProvider):
            raise DomainError("REFERENCE_NOT_FOUND",
                              f"{source!r} is not a payment provider of this platform.",
                              field="source")
        if day >= local_today():
            raise DomainError("STATEMENT_NOT_READY", bill_date=date)
        try:
            lines = await provider.statement(day.isoformat())
        except PaymentError as exc:
            raise DomainError("PAYMENT_PROVIDER_ERROR", str(exc)) from None
        start = day_start(day)
        end = start + dt.timedelta(days=1)
        ours_paid = {a["out_trade_no"]: a for a in await self._db.payments.find(
            {"provider": source, "status": {"$in": PAID},
             "paid_at": {"$gte": start - TOLERANCE, "$lt": end + TOLERANCE}},
            {"out_trade_no": 1, "amount": 1, "paid_at": 1, "order_no": 1}).to_list()}
        ours_refunded = {r["out_refund_no"]: r for r in await self._db.refund_requests.find(
            {"provider": source, "status": "done",
             "done_at": {"$gte": start - TOLERANCE, "$lt": end + TOLERANCE}},
            {"out_refund_no": 1, "amount": 1, "done_at": 1, "order_no": 1}).to_list()
            if r.get("out_refund_no")}
        theirs_paid = {ln.out_trade_no: ln for ln in lines if ln.kind == "payment"}
        theirs_refunded = {ln.out_refund_no: ln for ln in lines if ln.kind == "refund"}
        in_day = {"payments": [a for a in ours_paid.values() if start <= a["paid_at"] < end],
                  "refunds": [r for r in ours_refunded.values()
                              if start <= r["done_at"] < end]}
        totals = {
            "theirs": {"payments": len(theirs_paid),
                       "payment_amount": sum(ln.amount for ln in theirs_paid.values()),
                       "refunds": len(theirs_refunded),
                       "refund_amount": sum(ln.amount for ln in theirs_refunded.values()),
                       "fees": sum(ln.fee for ln in lines)},
            "ours": {"payments": len(in_day["payments"]),
                     "payment_amount": sum(a["amount"] for a in in_day["payments"]),
                     "refunds": len(in_day["refunds"]),
                     "refund_amount": sum(int(r["amount"]) for r in in_day["refunds"])}}
        totals["match"] = all(totals["theirs"][k] == totals["ours"][k] for k in (
            "payments", "payment_amount", "refunds", "refund_amount"))
        found: list[dict[str, Any]] = []
        matched = await self._theirs(found, "payment", theirs_paid, ours_paid,
                                     lambda n: self._db.payments.find_one({"out_trade_no": n}),
                                     PAID)
        missing = [a for n, a in ours_paid.items()
                   if n not in theirs_paid and start <= a["paid_at"] < end]
        # ours near midnight that their bill lacks: the provider may have booked them on
        # the neighbouring day — look there before calling them ours alone
        neighbours = await self._neighbours(provider, day, [
            a["paid_at"] for a in missing
            if a["paid_at"] < start + TOLERANCE or a["paid_at"] >= end - TOLERANCE])
        for ours in missing:
            if ours["out_trade_no"] in neighbours:
                matched += 1
                continue
            found.append(_diff("only_ours", "payment", ours["out_trade_no"],
                               int(ours["amount"]), None, ours.get("order_no")))
        matched += await self._theirs(
            found, "refund", theirs_refunded, ours_refunded,
            lambda n: self._db.refund_requests.find_one({"out_refund_no": n}), ["done"])
        for number, ours in ours_refunded.items():
            if number not in theirs_refunded and start <= ours["done_at"] < end:
                found.append(_diff("only_ours", "refund", number, int(ours["amount"]), None,
                                   ours.get("order_no")))
        return await self._keep(actor, day, source, run_id, len(lines), matched, totals,
                                found)

    async def _keep(self, actor: Principal | None, day: dt.date, source: str,
                    run_id: str | None, lines: int, matched: int, totals: dict[str, Any],
                    found: list[dict[str, Any]]) -> dict[str, Any]:
        """Store a run and its differences together (once per id); audited."""
        now = now_ms()
        run_id = run_id or f"RC{now:%Y%m%d%H%M%S}{secrets.token_hex(3).upper()}"
        run = {"_id": run_id, "date": day.isoformat(), "source": source, "created_at": now,
               "created_by": actor.audit_actor() if actor else {"kind": "job"},
               "lines": lines, "matched": matched, "totals": totals,
               "differences": len(found), "open_differences": len(found)}
        differences = [{**d, "_id": f"{run_id}:D{i + 1}", "run_id": run_id, "seq": i + 1,
                        "source": source, "date": day.isoformat(), "status": "open"}
                       for i, d in enumerate(found)]

        async def keep(session: AsyncClientSession) -> bool:
            return await self.records.add(run, differences, session)

        await transact(self._db, keep)
        if actor is not None:
            await self._audit.record(actor, "reconciliation.run", target=run_id, details={
                "source": source, "date": day.isoformat(), "differences": len(found)})
        return await self.view(run_id)

    async def _station(self, day: dt.date, station_id: str
                       ) -> tuple[int, int, dict[str, Any], list[dict[str, Any]]]:
        """Our tickets of a station's departures against its daily sales detail: seats
        sold (by sale and seat; the price) and seats given back (refunds, voids, the old
        seat of a change). Its window's own sales are not ours to match."""
        station = await self._db.stations.find_one({"_id": station_id})
        if station is None:
            raise DomainError("REFERENCE_NOT_FOUND", f"No such station: {station_id!r}.",
                              field="source")
        if self._exchanges is None:
            raise DomainError("STATION_UNSUPPORTED")
        try:
            theirs_all = await self._exchanges.for_station(station).daily_sales(day)
        except ExchangeError as exc:
            raise DomainError(exc.code, exc.message, **exc.details) from None
        theirs = [ln for ln in theirs_all if not ln.window]
        start = day_start(day)
        end = start + dt.timedelta(days=1)
        departures = set(await self._db.departures.distinct(
            "_id", {"station_id": station_id,
                    "service_date": {"$gte": (day - dt.timedelta(days=1)).isoformat()}}))

        def key(sale_id: str, seat: int) -> str:
            return f"{sale_id}/{seat}"

        sold: dict[str, dict[str, Any]] = {}
        returned: dict[str, dict[str, Any]] = {}
        async for t in self._db.tickets.find({"issued_at": {"$gte": start, "$lt": end}}):
            if t["departure_id"] in departures and t.get("sale_id"):
                sold[key(t["sale_id"], t["seat"])] = t
                if t.get("changed_from"):  # the change gave the old seat back
                    old = await self._db.tickets.find_one({"ticket_no": t["changed_from"]})
                    if old and old.get("sale_id"):
                        returned[key(old["sale_id"], old["seat"])] = old
        async for t in self._db.tickets.find({"refund.at": {"$gte": start, "$lt": end},
                                              "status": {"$in": ["refunded", "voided"]}}):
            if t["departure_id"] in departures and t.get("sale_id"):
                returned[key(t["sale_id"], t["seat"])] = t
        their_sold = {key(ln.sale_id, ln.seat): ln for ln in theirs if ln.event == "sale"}
        their_back = {key(ln.sale_id, ln.seat): ln for ln in theirs if ln.event == "return"}
        totals = {"theirs": {"sales": len(their_sold),
                             "sale_amount": sum(ln.price for ln in their_sold.values()),
                             "returns": len(their_back),
                             "window_sales": sum(1 for ln in theirs_all if ln.window)},
                  "ours": {"sales": len(sold),
                           "sale_amount": sum(int(t["price"]) for t in sold.values()),
                           "returns": len(returned)}}
        totals["match"] = all(totals["theirs"][k] == totals["ours"][k]
                              for k in ("sales", "sale_amount", "returns"))
        found: list[dict[str, Any]] = []
        matched = 0
        live = ("issued", "picked_up", "checked_in")
        for ref, line in their_sold.items():
            mine = sold.get(ref) or await self._db.tickets.find_one(
                {"sale_id": line.sale_id, "seat": line.seat, "departure_id": {
                    "$in": list(departures)}})
            if mine is None:
                found.append(_diff("only_theirs", "sale", ref, None, line.price))
            elif int(mine["price"]) != line.price:
                found.append(_diff("amount_differs", "sale", ref, int(mine["price"]),
                                   line.price, mine["order_no"]))
            else:
                matched += 1
        for ref, mine in sold.items():
            if ref not in their_sold:
                found.append(_diff("only_ours", "sale", ref, int(mine["price"]), None,
                                   mine["order_no"]))
        for ref, line in their_back.items():
            mine = returned.get(ref) or await self._db.tickets.find_one(
                {"sale_id": line.sale_id, "seat": line.seat})
            if mine is None:
                found.append(_diff("only_theirs", "return", ref, None, line.price))
            elif mine["status"] in live:
                found.append(_diff("status_differs", "return", ref, int(mine["price"]),
                                   line.price, mine["order_no"], ours_status=mine["status"],
                                   theirs_status="returned"))
            else:
                matched += 1
        for ref, mine in returned.items():
            if ref not in their_back:
                found.append(_diff("status_differs", "return", ref, int(mine["price"]), None,
                                   mine["order_no"], ours_status=mine["status"],
                                   theirs_status="sold"))
        return len(theirs_all), matched, totals, found

    @staticmethod
    async def _theirs(found: list[dict[str, Any]], kind: str, theirs: dict[str, Any],
                      ours: dict[str, dict[str, Any]], lookup: Any, done: list[str]) -> int:
        """Their lines of a kind against ours (in the window, else looked up by number):
        differences appended to ``found``; the number matched."""
        matched = 0
        for number, line in theirs.items():
            mine = ours.get(number) or await lookup(number)
            if mine is None:
                found.append(_diff("only_theirs", kind, number, None, line.amount))
            elif mine.get("status", done[0]) not in done:
                found.append(_diff("status_differs", kind, number, int(mine["amount"]),
                                   line.amount, mine.get("order_no"),
                                   ours_status=mine.get("status"), theirs_status="done"))
            elif int(mine["amount"]) != line.amount:
                found.append(_diff("amount_differs", kind, number, int(mine["amount"]),
                                   line.amount, mine.get("order_no")))
            else:
                matched += 1
        return matched

    async def _neighbours(self, provider: BasePaymentProvider, day: dt.date,
                          near: list[dt.datetime]) -> set[str]:
        """Payment numbers in the bills of the days before / after ``day`` that ``near``
        times touch (a bill not published yet contributes nothing)."""
        start = day_start(day)
        days = {day - dt.timedelta(days=1) for t in near if t < start + TOLERANCE}
        days |= {day + dt.timedelta(days=1) for t in near if t >= start + TOLERANCE}
        numbers: set[str] = set()
        for other in days:
            if other >= local_today():
                continue
            try:
                numbers |= {ln.out_trade_no for ln in await provider.statement(
                    other.isoformat()) if ln.kind == "payment"}
            except PaymentError:
                continue
        return numbers

    async def daily(self, now: dt.datetime | None = None) -> int:
        """Yesterday's bills of every provider and sales reports of every station system,
        once each, after they are published; a source that fails (a provider or station
        down) is tried again on the next run, the others go on."""
        now = (now or dt.datetime.now(dt.UTC)).astimezone(LOCAL_TZ)
        if now.hour < AUTO_AFTER_HOUR:
            return 0
        day = (now.date() - dt.timedelta(days=1)).isoformat()
        stations = await self._db.stations.distinct(
            "_id", {"status": "active", "system.vendor": {"$nin": ["native", None]}})
        done = 0
        for source in [*self.bill_sources(), *(f"station:{s}" for s in stations)]:
            run_id = f"AUTO-{source.replace(':', '-')}-{day}"
            if await self.records.get(run_id) is not None:
                continue
            try:
                await self.run(None, day, source, run_id=run_id)
                done += 1
            except DomainError as exc:
                log.warning("daily reconciliation of %s not done: %s", source, exc.code)
        return done

    async def view(self, run_id: str) -> dict[str, Any]:
        run = await self.records.get(run_id)
        if run is None:
            raise DomainError("NOT_FOUND", "No such reconciliation run.")
        return {"id": run["_id"], "date": run["date"], "source": run["source"],
                "created_at": run["created_at"].astimezone(LOCAL_TZ).isoformat(),
                "created_by": (run.get("created_by") or {}).get("username", "job"),
                "lines": run["lines"], "matched": run["matched"], "totals": run["totals"],
                "open_differences": run["open_differences"],
                "differences": [_diff_view(d) for d in await self.records.differences(run_id)]}

    async def differences(self, run_id: str, status: str | None, page: Page
                          ) -> tuple[list[dict[str, Any]], int]:
        """A page of a run's differences in the order found, and how many match."""
        if await self.records.get(run_id) is None:
            raise DomainError("NOT_FOUND", "No such reconciliation run.")
        rows, total = await self.records.differences_page(run_id, status, page)
        return [_diff_view(d) for d in rows], total

    async def listed(self, date: str | None, page: Page) -> tuple[list[dict[str, Any]], int]:
        """A page of reconciliation runs, newest first, and how many match."""
        query = {"date": date} if date else {}
        rows, total = await self.records.listed(query, page)
        return [{"id": r["_id"], "date": r["date"], "source": r["source"],
                 "lines": r["lines"], "matched": r["matched"],
                 "totals_match": r["totals"]["match"], "differences": r["differences"],
                 "open_differences": r["open_differences"],
                 "created_at": r["created_at"].astimezone(LOCAL_TZ).isoformat()}
                for r in rows], total

    async def resolve(self, actor: Principal, run_id: str, diff_id: str,
                      body: dict[str, Any]) -> dict[str, Any]:
        """Finance settles a difference: an adjusting entry, or a note saying why none."""
        diff = await self.records.difference(f"{run_id}:{diff_id}")
        if diff is None:
            raise DomainError("NOT_FOUND", "No such difference.")
        if diff["status"] != "open":
            raise DomainError("DIFFERENCE_RESOLVED")
        action, note = body["action"], str(body.get("note", ""))
        entry_id, delta = None, 0
        if action == "adjust":
            postings, delta = await self._adjusting(diff, body)
            entry_id = f"adjust:{diff['_id']}"
            now = now_ms()
            await self._ledger.book.post({
                "_id": entry_id, "kind": "adjustment", "at": now,
                "booked_on": local_today(now).isoformat(), "event_at": now,
                "postings": postings, "note": note, "reconciliation": diff["_id"],
                "order_no": diff.get("order_no")})
        resolution = {"action": action, "note": note, "entry": entry_id,
                      "by": actor.audit_actor(), "at": now_ms()}

        async def settle(session: AsyncClientSession) -> bool:
            return await self.records.resolve(diff["_id"], resolution, session)

        if not await transact(self._db, settle):
            raise DomainError("DIFFERENCE_RESOLVED")
        await self._audit.record(actor, "reconciliation.resolve", target=diff["_id"],
                                 details={"action": action, "note": note, "entry": entry_id,
                                          "amount": delta})
        return _diff_view(await self.records.difference(diff["_id"]) or diff)

    async def _adjusting(self, diff: dict[str, Any], body: dict[str, Any]
                         ) -> tuple[list[dict[str, Any]], int]:
        """The postings of an adjusting entry, and the amount it moves. A provider's bill:
        its funds against suspense, by what its side differs. A station's sales report: the
        settlement entity finance names (the station, the carrier, …) is owed the amount —
        by default what the station's price differs from ours — against suspense, and is
        paid or charged it in its next settlement."""
        station = diff["source"].startswith("station:")
        delta = (diff.get("theirs") or 0) - (diff.get("ours") or 0)
        if diff["kind"] in ("refund", "return"):
            delta = -delta  # money given back
        if body.get("amount") is not None:
            if not station:
                raise DomainError("ADJUSTMENT_ACCOUNT", "A payment difference adjusts the "
                                  "provider's funds by what its bill says; amount is for "
                                  "station differences.", field="amount")
            delta = int(body["amount"])
        if delta == 0:
            raise DomainError("NOTHING_TO_ADJUST")
        if not station:
            if body.get("account"):
                raise DomainError("ADJUSTMENT_ACCOUNT", "A payment difference adjusts the "
                                  "provider's funds; account is for station differences.",
                                  field="account")
            return [{"account": f"funds:{diff['source']}", "amount": delta},
                    {"account": SUSPENSE, "amount": -delta}], delta
        account = str(body.get("account") or "")
        if not account:
            raise DomainError("ADJUSTMENT_ACCOUNT", "Name the settlement entity that bears a "
                              "station difference (account, e.g. carrier:C001).",
                              field="account")
        own = account == f"station:{diff['source'][8:]}"  # the reporting station itself
        if not own and (account.split(":", 1)[0] not in KINDS or
                        not await self._ledger.book.has_account(account)):
            raise DomainError("REFERENCE_NOT_FOUND", f"No settlement entity {account!r} with "
                              "an account in the ledger.", field="account")
        return [{"account": account, "amount": -delta},
                {"account": SUSPENSE, "amount": delta}], delta


def _diff(kind_of: str, kind: str, ref: str, ours: int | None, theirs: int | None,
          order_no: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"class": kind_of, "kind": kind, "ref": ref, "ours": ours, "theirs": theirs,
            "order_no": order_no, **extra}


def _diff_view(d: dict[str, Any]) -> dict[str, Any]:
    view = {"id": d["_id"].rsplit(":", 1)[1], "class": d["class"], "kind": d["kind"],
            "ref": d["ref"], "ours": d.get("ours"), "theirs": d.get("theirs"),
            "order_no": d.get("order_no"), "status": d["status"]}
    for key in ("ours_status", "theirs_status"):
        if d.get(key):
            view[key] = d[key]
    if d.get("resolution"):
        r = d["resolution"]
        view["resolution"] = {"action": r["action"], "note": r["note"], "entry": r["entry"],
                              "by": (r.get("by") or {}).get("username", ""),
                              "at": r["at"].astimezone(LOCAL_TZ).isoformat()}
    return view

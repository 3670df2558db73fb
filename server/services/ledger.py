"""The ledger's postings: every movement of money and every ticket's clearing, once.

Accounts (debit positive; a credit balance is what the platform owes):

- ``funds:<provider>`` — money a provider (or a station till) holds for the platform;
  ``deposit:outlet:<id>`` / ``deposit:partner:<id>`` — a prepaid deposit (a credit balance
  is the seller's money); ``bank:operator`` — the platform's bank account.
- ``payable:orders`` — passengers' money received and not yet cleared or paid back.
- the settlement entities: ``carrier:<id>``, ``station:<id>``, ``outlet:<id>``,
  ``partner:<id>``, ``provider:<id>`` (its fee), ``platform:keyun`` (the service fee);
  ``suspense:reconciliation`` — differences finance adjusted.

Entries and the source events they come from (the owners write the events; this job only
reads them, so no aggregate gets a second writer):

- ``mv:<movement id>`` — a payment (funds ↑, payable ↓), a refund paid back (payable ↑,
  funds ↓), a deposit top-up (bank ↑, deposit ↓); from ``money_movements``, which the
  payments capability writes once per movement in the business transaction — the outbox.
- ``sale:<ticket_no>`` — a ticket issued: its price leaves ``payable:orders`` and is shared
  out by the clearing rules in force when it was issued; for a changed ticket (改签) the
  replaced ticket's shares come back and the new departure's are given (gross: both sets of
  postings stay in the entry, even where they cancel out).
- ``return:<ticket_no>`` — a ticket refunded or voided: its shares come back, the amount
  paid back goes to ``payable:orders`` and the refund fee is shared out by the rules. A
  fee-free refund of a cancelled or disrupted departure costs the carrier alone: the
  station, the seller, the provider and the platform keep their shares.

The job reads its sources by time from where it stopped, going back a margin each run (a
write committed late is still seen; ids make re-reading harmless); ``check`` re-reads whole
days, recomputes every balance from the journal and alerts on any difference.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ, local_today, now_ms
from server.paging import Page
from server.services.alerts import AlertService
from server.services.clearing import ClearingRules, Sale, split_fee, split_sale
from server.services.jobs import RecordFailures
from server.storage.cursors import dotted
from server.storage.ledger import LedgerBook

log = logging.getLogger(__name__)

PAYABLE = "payable:orders"
BANK = "bank:operator"
SUSPENSE = "suspense:reconciliation"
MARGIN = dt.timedelta(minutes=2)  # each run reads this far back behind its cursor
BATCH = 500
PER_TRANSACTION = 100  # entries posted together (their balances moved once per account)


def funds_account(movement: dict[str, Any]) -> str:
    """Where an attempt's money sits: a prepaid deposit, or at the provider."""
    if movement.get("outlet_id"):
        return f"deposit:outlet:{movement['outlet_id']}"
    if movement.get("partner_id"):
        return f"deposit:partner:{movement['partner_id']}"
    return f"funds:{movement['provider']}"


def _postings(shares: dict[str, int], sign: int) -> list[dict[str, Any]]:
    return [{"account": account, "amount": sign * fen} for account, fen in shares.items()
            if fen]


class Ledger:
    def __init__(self, db: AsyncDatabase[Any], rules: ClearingRules, alerts: AlertService,
                 failures: RecordFailures | None = None) -> None:
        self._db = db
        self.book = LedgerBook(db)
        self.rules = rules
        self._alerts = alerts
        self.failures = failures or RecordFailures()

    # --- the posting job ----------------------------------------------------------------------
    async def run(self) -> int:
        """Post what happened since the last run; the number of entries posted."""
        posted = 0
        for source in self._sources():
            since = await self.book.cursors.get(source[0])
            query: dict[str, Any] = {source[2]: {"$gte": since - MARGIN}} if since else \
                {source[2]: {"$exists": True}}
            posted += await self._post_all(*source, query)
        return posted

    def _sources(self) -> list[tuple[str, str, str, Any, Any]]:
        """Each source: its cursor's name, collection, time field, the entry one record
        makes (None: none yet), and that entry's id."""
        return [("movements", "money_movements", "at", self._movement,
                 lambda d: f"mv:{d['_id']}"),
                ("issued", "tickets", "issued_at", self._sale_of,
                 lambda d: f"sale:{d['ticket_no']}"),
                ("returned", "tickets", "refund.at", self._return_of,
                 lambda d: f"return:{d['ticket_no']}")]

    async def _post_all(self, name: str, collection: str, field: str, entry_for: Any,
                        entry_of: Any, query: dict[str, Any]) -> int:
        posted, last, page = 0, None, query
        published = await self.rules.published()
        while True:
            docs = await self._db[collection].find(page).sort(
                [(field, 1), ("_id", 1)]).limit(BATCH).to_list()
            # what the margin re-reads is mostly posted already: one look-up per page
            done = await self.book.existing([entry_of(d) for d in docs])
            entries: list[tuple[Any, dict[str, Any]]] = []
            for doc in docs:
                if entry_of(doc) in done:
                    continue
                with self.failures.record(f"ledger-{name}", doc.get("_id")):
                    entry = await entry_for(doc, published)
                    if entry is not None:
                        entries.append((doc.get("_id"), entry))
            for first in range(0, len(entries), PER_TRANSACTION):
                chunk = entries[first:first + PER_TRANSACTION]
                try:
                    posted += await self.book.post_many([e for _, e in chunk])
                except Exception:  # one at a time: a bad record does not hold the others
                    for key, entry in chunk:
                        with self.failures.record(f"ledger-{name}", key):
                            posted += await self.book.post_many([entry])
            if docs:
                last = dotted(docs[-1], field)
                await self.book.cursors.advance(name, last)
            if len(docs) < BATCH:
                return posted
            page = {"$and": [query, {"$or": [{field: {"$gt": last}},
                                             {field: last, "_id": {"$gt": docs[-1]["_id"]}}]}]}

    async def catch_up(self, days: int = 2) -> int:
        """Re-read the last ``days`` days of every source whole: anything a run missed is
        posted now (logged: it should not happen)."""
        since = now_ms() - dt.timedelta(days=days)
        posted = 0
        for source in self._sources():
            posted += await self._post_all(*source, {source[2]: {"$gte": since}})
        if posted:
            log.warning("ledger catch-up posted %d entries a run had missed", posted)
        return posted

    def _entry(self, entry_id: str, kind: str, postings: list[dict[str, Any]],
               event_at: dt.datetime, **fields: Any) -> dict[str, Any]:
        now = now_ms()
        return {"_id": entry_id, "kind": kind, "postings": postings, "at": now,
                "booked_on": local_today(now).isoformat(), "event_at": event_at, **fields}

    async def _movement(self, movement: dict[str, Any], published: list[dict[str, Any]]
                        ) -> dict[str, Any] | None:
        amount, kind = int(movement["amount"]), movement["kind"]
        if amount == 0:
            return None
        funds = funds_account(movement)
        if kind == "payment":
            postings = [{"account": funds, "amount": amount},
                        {"account": PAYABLE, "amount": -amount}]
        elif kind == "refund":
            postings = [{"account": PAYABLE, "amount": amount},
                        {"account": funds, "amount": -amount}]
        elif kind == "deposit":
            postings = [{"account": BANK, "amount": amount},
                        {"account": funds, "amount": -amount}]
        else:
            raise ValueError(f"unknown movement kind {kind}")
        return self._entry(
            f"mv:{movement['_id']}", kind, postings, movement["at"],
            order_no=movement.get("order_no"), provider=movement["provider"],
            out_trade_no=movement.get("out_trade_no"),
            out_refund_no=movement.get("out_refund_no"))

    async def _sale_of(self, ticket: dict[str, Any], published: list[dict[str, Any]]
                       ) -> dict[str, Any] | None:
        """``sale:<ticket_no>``: the ticket's price shared out (a change: re-shared)."""
        entry_id = f"sale:{ticket['ticket_no']}"  # (its callers know it is not posted)
        sale = await self.sale_context(ticket)
        if sale is None:
            return None
        version = self.rules.in_force(published, ticket["issued_at"])
        shares = split_sale(version, sale)
        postings = _postings(shares, -1)
        kind = "sale"
        replaced = None
        if ticket.get("changed_from"):
            kind = "change"
            replaced = await self._cleared(ticket["changed_from"], published)
            if replaced is None:
                return None
            old = replaced["shares"]
            postings += _postings(old, +1)
            if replaced["price"] != ticket["price"]:  # a cheaper departure: owed back
                postings.append({"account": PAYABLE,
                                 "amount": -(replaced["price"] - ticket["price"])})
        else:
            postings.append({"account": PAYABLE, "amount": ticket["price"]})
        return self._entry(
            entry_id, kind, postings, ticket["issued_at"],
            order_no=ticket["order_no"], ticket_no=ticket["ticket_no"],
            rule_version=version["_id"], replaces=ticket.get("changed_from"),
            ticket={"price": ticket["price"], "shares": shares, "sale": sale.__dict__})

    async def _cleared(self, ticket_no: str, published: list[dict[str, Any]]
                       ) -> dict[str, Any] | None:
        """A ticket's clearing: its price and shares (posting its sale first if a run has
        not yet)."""
        entry = await self.book.get(f"sale:{ticket_no}")
        if entry is None:
            ticket = await self._db.tickets.find_one({"ticket_no": ticket_no})
            if ticket is None or not ticket.get("issued_at"):
                return None
            made = await self._sale_of(ticket, published)
            if made is not None:
                await self.book.post(made)
            entry = await self.book.get(f"sale:{ticket_no}")
        return entry["ticket"] if entry else None

    async def _return_of(self, ticket: dict[str, Any], published: list[dict[str, Any]]
                         ) -> dict[str, Any] | None:
        """``return:<ticket_no>``: a refunded or voided ticket's money comes back."""
        if ticket["status"] not in ("refunded", "voided"):
            return None
        entry_id = f"return:{ticket['ticket_no']}"  # (its caller knows it is not posted)
        cleared = await self._cleared(ticket["ticket_no"], published)
        if cleared is None:
            return None
        refund = ticket["refund"]
        fee, amount = int(refund.get("fee", 0)), int(refund.get("amount", 0))
        sale = Sale(**cleared["sale"])
        version = self.rules.in_force(published, refund["at"])
        dep = await self._db.departures.find_one({"_id": ticket["departure_id"]},
                                                 {"status": 1, "disruption": 1})
        carrier_fault = ticket["status"] == "refunded" and fee == 0 and dep is not None and (
            dep.get("status") == "cancelled" or bool(dep.get("disruption")))
        if carrier_fault:
            kind = "cancellation_refund"
            postings = [{"account": f"carrier:{sale.carrier_id}", "amount": amount},
                        {"account": PAYABLE, "amount": -amount}]
            fee_shares: dict[str, int] = {}
        else:
            kind = "ticket_refund" if ticket["status"] == "refunded" else "ticket_void"
            fee_shares = split_fee(version, sale, fee) if fee else {}
            postings = [*_postings(cleared["shares"], +1),
                        {"account": PAYABLE, "amount": -amount},
                        *({**p, "role": "fee"} for p in _postings(fee_shares, -1))]
        return self._entry(
            entry_id, kind, postings, refund["at"], order_no=ticket["order_no"],
            ticket_no=ticket["ticket_no"], rule_version=version["_id"],
            ticket={"price": cleared["price"], "fee": fee, "amount": amount,
                    "fee_shares": fee_shares, "sale": cleared["sale"]})

    async def sale_context(self, ticket: dict[str, Any]) -> Sale | None:
        order = await self._db.orders.find_one({"order_no": ticket["order_no"]})
        dep = await self._db.departures.find_one({"_id": ticket["departure_id"]},
                                                 {"carrier_id": 1, "station_id": 1,
                                                  "route_id": 1})
        if order is None or dep is None:
            return None
        station = await self._db.stations.find_one({"_id": dep["station_id"]},
                                                   {"division": 1})
        provider = "unpaid"
        if order.get("payment_ref"):
            attempt = await self._db.payments.find_one({"out_trade_no": order["payment_ref"]},
                                                       {"provider": 1})
            provider = attempt["provider"] if attempt else "unpaid"
        seller = (f"outlet:{order['outlet_id']}" if order.get("outlet_id") else
                  f"partner:{order['partner_id']}" if order.get("partner_id") else None)
        return Sale(ticket_no=ticket["ticket_no"], price=int(ticket["price"]),
                    station_fee=int(ticket.get("station_fee", 0)),
                    ticket_type=ticket["ticket_type"], channel=order["channel"],
                    route_id=dep["route_id"], region=(station or {}).get("division", ""),
                    station_id=dep["station_id"], carrier_id=dep.get("carrier_id", ""),
                    seller=seller, provider=provider)

    async def sales(self, since: dt.datetime, until: dt.datetime
                    ) -> AsyncIterator[tuple[dt.datetime, Sale]]:
        """Tickets cleared (sold) from ``since`` to ``until``, for a simulation."""
        cursor = self.book.find({"kind": "sale", "event_at": {"$gte": since, "$lt": until}})
        async for entry in cursor:
            yield entry["event_at"], Sale(**entry["ticket"]["sale"])

    # --- checks ---------------------------------------------------------------------------
    async def check(self) -> dict[str, Any]:
        """Re-read the last days' sources, then recompute every balance from the journal:
        a balance that differs, or a journal that does not sum to zero, is an alert."""
        await self.catch_up()
        held = {a["_id"]: int(a["balance"]) for a in await self.book.accounts()}
        summed = await self.book.recomputed()
        differ = {account: {"held": held.get(account, 0), "journal": summed.get(account, 0)}
                  for account in set(held) | set(summed)
                  if held.get(account, 0) != summed.get(account, 0)}
        total = sum(summed.values())
        if differ or total:
            await self._alerts.raise_alert(
                "ledger_imbalance", "ledger:balances",
                f"账务不平：{len(differ)} 个账户余额与分录不符，分录合计 {total} 分",
                {"accounts": dict(list(differ.items())[:20]), "journal_total": total})
        else:
            await self._alerts.ended("ledger:balances", "balanced")
        return {"accounts": len(summed), "differences": differ, "journal_total": total}

    # --- reading (finance) -------------------------------------------------------------------
    async def accounts(self, prefix: str | None = None) -> list[dict[str, Any]]:
        return [_account_view(a) for a in await self.book.accounts(prefix)]

    async def accounts_page(self, prefix: str | None, page: Page
                            ) -> tuple[list[dict[str, Any]], int, int]:
        """A page of the accounts by name, how many there are, and their balances' sum."""
        rows, count, total = await self.book.accounts_page(prefix, page)
        return [_account_view(a) for a in rows], count, total

    async def entries(self, account: str | None, since: dt.datetime | None,
                      until: dt.datetime | None, limit: int, after: str | None
                      ) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if account:
            query["postings.account"] = account
        if since or until:
            query["at"] = {**({"$gte": since} if since else {}),
                           **({"$lt": until} if until else {})}
        if after:
            query["_id"] = {"$gt": after}
        rows = await self.book.find(query, limit + 1, sort=[("_id", 1)]).to_list()
        more = len(rows) > limit
        rows = rows[:limit]
        return {"entries": [entry_view(e) for e in rows],
                "next": rows[-1]["_id"] if more else None}


    async def statement(self, account: str, page: Page) -> tuple[list[dict[str, Any]], int]:
        """A page of one account's lines, the latest first: each entry with what it moved on
        the account (``amount``: positive when the account's holder gained — a credit, as
        a deposit's top-up or refund — negative when it paid), and how many there are."""
        rows, total = await self.book.of_account(account, page)
        lines = []
        for entry in rows:
            line = entry_view(entry)
            line["amount"] = -sum(p["amount"] for p in entry["postings"]
                                  if p["account"] == account)
            del line["postings"]
            lines.append(line)
        return lines, total


def _account_view(account: dict[str, Any]) -> dict[str, Any]:
    return {"account": account["_id"], "balance": int(account["balance"]),
            "entries": int(account.get("entries", 0)),
            "updated_at": account["updated_at"].astimezone(LOCAL_TZ).isoformat()
            if account.get("updated_at") else None}


def entry_view(entry: dict[str, Any]) -> dict[str, Any]:
    view = {"id": entry["_id"], "kind": entry["kind"], "postings": entry["postings"],
            "at": entry["at"].astimezone(LOCAL_TZ).isoformat(), "booked_on": entry["booked_on"],
            "event_at": entry["event_at"].astimezone(LOCAL_TZ).isoformat()}
    for key in ("order_no", "ticket_no", "rule_version", "provider", "out_trade_no",
                "out_refund_no", "note", "batch"):
        if entry.get(key):
            view[key] = entry[key]
    return view


"""The layer map, checked: dependencies point inward, and each collection has one writer.

Pure units over the source text (AST), so they run in milliseconds. Known departures from
the rule are listed by name with the issue that removes them (issue 12: one owner per
aggregate); the lists may only shrink — a new second writer or a new back-arrow fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

OUTER = ("handlers", "payments", "notify", "channels", "admin", "devstack", "sandbox", "tests",
         "bench")
CORE_ROOTS = {"server/app.py"}  # the composition root: the one module that imports all
# server.storage and server.exchange are below the services: they never import one

WRITES = {"insert_one", "insert_many", "update_one", "update_many", "replace_one",
          "delete_one", "delete_many", "find_one_and_update", "find_one_and_replace",
          "find_one_and_delete", "bulk_write"}
# collection -> the modules that write it. One module each is the goal (issue 12); where
# more are listed, the first is the owner and the others still have to move into it.
WRITERS = {
    "orders": {"server/storage/orders.py"},
    "tickets": {"server/storage/orders.py"},
    "refund_requests": {"server/storage/refunds.py"},
    "payments": {"server/storage/payments.py"},
    "money_movements": {"server/storage/payments.py"},
    "outlets": {"server/storage/outlets.py"},
    "partners": {"server/storage/partners.py"},
    "partner_keys": {"server/storage/partners.py"},
    "reconciliations": {"server/storage/payments.py"},
    "hold_claims": {"server/storage/hold_claims.py"},
    "seat_holds": {"server/storage/inventory.py"},
    "members": {"server/storage/members.py"},
    "passengers": {"server/storage/members.py"},
    "staff": {"server/services/auth.py", "devstack/demo.py"},
    "stops": {"server/storage/network.py"},  # (and every kind of the network, by kind)
    "rules": {"server/storage/rules.py"},
    "webhooks": {"server/storage/webhooks.py"},
    "refresh_tokens": {"server/services/auth.py"},
    "notices": {"server/outbox.py", "notify/dispatch.py"},
    "gate_keys": {"server/storage/gate.py"},
    "gate_scans": {"server/storage/gate.py"},
    "gate_conflicts": {"server/storage/gate.py"},
    "departure_signoffs": {"server/storage/gate.py"},
    # (the sync's mirror of station data also upserts departures, through a generic path)
    "departures": {"server/storage/departures.py", "devstack/demo.py"},
    "stations": {"server/services/sync.py", "server/services/seats.py", "devstack/cli.py"},
    "station_calls": {"server/services/seats.py"},
    "sync_runs": {"server/services/sync.py"},
    "ticket_sources": {"server/services/ticket_sources.py"},
    "channels": {"devstack/demo.py"},
    "alerts": {"server/services/alerts.py"},
    "audit": {"server/services/audit.py"},
    "idempotency": {"server/services/idempotency.py"},
    "meta": {"devstack/demo.py"},
    "clearing_rules": {"server/storage/clearing.py"},
    "flow_departures": {"server/storage/flow.py"},
    "flow_days": {"server/storage/flow.py"},
    "flow_months": {"server/storage/flow.py"},
    "flow_cursors": {"server/storage/flow.py"},
    "retention_cursors": {"server/services/privacy.py"},
    "flow_warnings": {"server/storage/flow.py"},
    "ministry_exports": {"server/storage/ministry.py"},
    "ministry_cursors": {"server/storage/ministry.py"},
    "yunzheng_pulls": {"server/storage/ministry.py"},
    "ledger_entries": {"server/storage/ledger.py"},
    "ledger_accounts": {"server/storage/ledger.py"},
    "ledger_cursors": {"server/storage/ledger.py"},
    "invoices": {"server/storage/invoices.py"},
    "exports": {"server/storage/exports.py"},
    "export_chunks": {"server/storage/exports.py"},
    "invoice_cursors": {"server/storage/invoices.py"},
    "settlement_entities": {"server/storage/settlement.py"},
    "settlement_batches": {"server/storage/settlement.py"},
    "reconciliation_runs": {"server/storage/reconciliation.py"},
    "reconciliation_differences": {"server/storage/reconciliation.py"},
}


def _sources() -> dict[str, ast.Module]:
    out = {}
    for top in ("server", *OUTER[:6]):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            out[rel] = ast.parse(path.read_text(), rel)
    return out


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_dependencies_point_inward() -> None:
    wrong = []
    for rel, tree in _sources().items():
        if not rel.startswith("server/") or rel in CORE_ROOTS:
            continue
        for module in _imports(tree):
            if module.split(".")[0] in OUTER:
                wrong.append(f"{rel} imports {module}")
            low = rel.startswith(("server/storage/", "server/exchange/"))
            if low and module.startswith("server.services"):
                wrong.append(f"{rel} imports {module} (storage and adapters sit below)")
    assert not wrong, wrong


WRITING_HELPERS = {"Cursors"}  # server/storage/cursors.py: writes the collection it is given


def _collection_of(node: ast.expr) -> str | None:
    """``db.<name>``, ``self._db.<name>`` or ``db["<name>"]`` → ``<name>``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
        holder = node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id
        if holder in ("db", "_db"):
            return node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
            isinstance(node.value, (ast.Name, ast.Attribute)):
        return str(node.slice.value)
    return None


def _collection_writes(tree: ast.Module) -> set[str]:
    """Collections a module writes: ``db.<name>.<write>(…)`` and the like, also through an
    attribute bound to one (``self._requests = db.refund_requests``)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Attribute):
            name = _collection_of(node.value)
            if name:
                bound[node.targets[0].attr] = name
    found = set()
    for node in ast.walk(tree):
        # a collection handed to a writing helper (``Cursors(db.ledger_cursors)``) is written
        # by the module that hands it over
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in WRITING_HELPERS and node.args:
            name = _collection_of(node.args[0])
            if name:
                found.add(name)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in WRITES):
            continue
        target = node.func.value
        name = _collection_of(target)
        if name is None and isinstance(target, ast.Attribute) and target.attr in bound:
            name = bound[target.attr]
        if name:
            found.add(name)
    return found


def test_each_collection_has_its_writers_and_no_others() -> None:
    seen: dict[str, set[str]] = {}
    for rel, tree in _sources().items():
        for name in _collection_writes(tree):
            seen.setdefault(name, set()).add(rel)
    unexpected = {name: sorted(mods - WRITERS.get(name, set()))
                  for name, mods in seen.items() if mods - WRITERS.get(name, set())}
    assert not unexpected, f"a new writer of a collection (go through its owner): {unexpected}"
    stale = {name: sorted(WRITERS[name] - seen.get(name, set())) for name in WRITERS
             if WRITERS[name] - seen.get(name, set())}
    assert not stale, f"these no longer write: shrink WRITERS {stale}"


def _dynamic_writes(tree: ast.Module) -> bool:
    """Whether a module writes ``db[<a name computed at run time>]``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in WRITES and isinstance(node.func.value, ast.Subscript) \
                and not isinstance(node.func.value.slice, ast.Constant):
            return True
    return False


def test_the_network_has_one_writer() -> None:
    """Stations' base fields, carriers, vehicles, drivers, routes, stops, schedules and fares
    are written by ``server.storage.network`` alone — for staff, imports and the sync alike
    (it writes them by kind, ``db[kind]``, which only it and the demo loader may do)."""
    from server.storage.network import KINDS

    dynamic = sorted(rel for rel, tree in _sources().items() if _dynamic_writes(tree))
    # (and `keyun restore`, which writes every collection back exactly as it was backed up)
    assert dynamic == ["devstack/backup.py", "devstack/demo.py", "server/storage/network.py"], \
        dynamic
    for rel, tree in _sources().items():
        if rel == "server/storage/network.py":
            continue
        named = _collection_writes(tree) & (set(KINDS) - {"stations"})
        assert not named, f"{rel} writes {named}: go through server.storage.network"


def test_refund_requests_are_written_only_by_their_owner() -> None:
    """The refund aggregate's one module (it was upserted from three places with three id
    schemes): every other module asks it."""
    owner = Path(ROOT / "server/storage/refunds.py").read_text()
    assert "refund_requests" in owner
    for rel, tree in _sources().items():
        if rel != "server/storage/refunds.py":
            assert "refund_requests" not in _collection_writes(tree), rel


def test_audit_entries_are_written_by_services() -> None:
    """Handlers ask services, and the service that acts writes the audit entry — so no way
    into an action (API, job, console) can skip it."""
    for rel, tree in _sources().items():
        if not rel.startswith(("handlers/", "admin/")):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("record", "staff_action") \
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "audit":
                raise AssertionError(f"{rel}:{node.lineno} writes an audit entry")


def test_every_transaction_reads_a_snapshot_and_writes_to_a_majority() -> None:
    """Transactions start in one place, and every one states its concerns (Jepsen's MongoDB
    analysis: without snapshot reads and majority writes a transaction's reads may be rolled
    back or see others' uncommitted writes)."""
    allowed = "server/storage/transactions.py"
    starts: list[tuple[str, ast.Call]] = []
    for package in ("server", "handlers", "payments", "notify", "channels", "admin",
                    "devstack", "sandbox", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in {"start_session", "start_transaction",
                                           "with_transaction"}:
                    starts.append((str(path.relative_to(ROOT)), node))
    assert {where for where, _ in starts} == {allowed}, \
        [where for where, _ in starts if where != allowed]
    transactions = [call for _, call in starts if call.func.attr == "start_transaction"]
    assert transactions
    for call in transactions:
        concerns = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert concerns.get("read_concern") == "ReadConcern('snapshot')", concerns
        assert concerns.get("write_concern") == "WriteConcern('majority')", concerns

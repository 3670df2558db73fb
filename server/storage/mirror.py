"""Bringing a batch of records from elsewhere (a station system, a file from the 运政 system)
into a collection: each is new, changed or unchanged, compared field by field with what is
held. The owners of the collections (``network``, ``departures``) write the result."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo import UpdateOne


@dataclass
class Mirrored:
    """What a batch would do (or did): counts, the writes, and each change with its diff."""

    counts: dict[str, int] = field(default_factory=lambda: {"new": 0, "changed": 0,
                                                            "unchanged": 0})
    ops: list[UpdateOne] = field(default_factory=list)
    changed: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    new_ids: list[str] = field(default_factory=list)


def differs(old: Any, new: Any) -> bool:
    """Whether a stored value and an incoming one differ (times within a second are equal)."""
    if isinstance(old, dt.datetime) and isinstance(new, dt.datetime):
        return abs((old - new).total_seconds()) >= 1
    return bool(old != new)


def compare(existing: dict[str, dict[str, Any]], docs: Iterable[dict[str, Any]],
            fields: Iterable[str], *, now: dt.datetime,
            on_insert: Callable[[dict[str, Any]], dict[str, Any]] = lambda _: {},
            on_change: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]],
                                dict[str, Any]] = lambda *_: {},
            stamp: str = "updated_at", versioned: bool = True) -> Mirrored:
    """The upserts that make the held records say what ``docs`` say about ``fields`` (a
    field a document does not carry is left as held). ``on_insert`` gives a new record's
    other fields, ``on_change`` more update operators for a changed one; a versioned record
    starts at version 1 and goes up by one with every change."""
    out = Mirrored()
    wanted = tuple(fields)
    for doc in docs:
        values = {k: doc[k] for k in wanted if k in doc}
        old = existing.get(doc["_id"])
        if old is None:
            out.counts["new"] += 1
            out.new_ids.append(doc["_id"])
            insert = dict(on_insert(doc))
            if versioned:
                insert["version"] = 1
            out.ops.append(UpdateOne({"_id": doc["_id"]}, {
                "$set": {**values, stamp: now}, "$setOnInsert": insert}, upsert=True))
            continue
        diff = {k: v for k, v in values.items() if differs(old.get(k), v)}
        if not diff:
            out.counts["unchanged"] += 1
            continue
        out.counts["changed"] += 1
        out.changed.append((old, diff))
        update: dict[str, Any] = {"$set": {**diff, stamp: now}, **on_change(old, doc, diff)}
        if versioned:
            update["$inc"] = {"version": 1}
        out.ops.append(UpdateOne({"_id": doc["_id"]}, update))
    return out

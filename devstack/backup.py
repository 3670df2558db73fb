"""``keyun backup`` / ``keyun restore``: every collection of the Keyun database as BSON,
consistent as of one moment, and back into a fresh database.

A backup is a directory: ``manifest.json`` (format, when, how it was made consistent, and per
collection its document count, SHA-256 and indexes) and one ``<collection>.bson.gz`` per
collection — concatenated BSON documents in ``_id`` order, gzipped, as ``mongodump --gzip``
writes them. Documents go through as raw BSON (never decoded), so types survive exactly.

Consistency: every collection is read inside one read-only transaction with read concern
``snapshot``, so the files show the database as of one moment even while it is written to.
MongoDB ends a transaction after ``transactionLifetimeLimitSeconds`` (60 s by default); a
backup that outgrows it is read again in a snapshot session (``snapshot=True``: one cluster
time, no lifetime limit, but MongoDB keeps snapshot history only ``minSnapshotHistoryWindow
InSeconds``, 300 s by default). Beyond that use ``mongodump --oplog`` against the replica set
(docs/deploy.md). SecantusDB isolates the transaction but not a snapshot session
(docs/secantusdb.md), which is why the transaction comes first.

Restore checks every file against the manifest before it writes anything, refuses a target
that holds documents in any backed-up collection (unless told to drop them), inserts the raw
documents as they were (validators do not apply to data written by an earlier version), then
brings validators and indexes up to date (``ensure_schema``) and recreates any other index
the backup lists. Seat state lives in Redis and is rebuilt from MongoDB: start Keyun on an
empty Redis after a restore.

Restore is the one bulk writer of every collection besides their owners, like mongorestore:
it writes documents back exactly as the owners wrote them.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.storage.collections import ensure_schema
from server.storage.transactions import read_at_one_moment

log = logging.getLogger(__name__)

FORMAT = "keyun-backup/1"
MANIFEST = "manifest.json"
RAW = CodecOptions(document_class=RawBSONDocument)
BATCH = 1000


class BackupError(Exception):
    """The backup cannot be made or restored; the message says why and what to do."""


def _names(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("system."))


def prepare(out: Path) -> None:
    """The backup's directory, new or empty: a backup never overwrites one."""
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} exists and is not empty: a backup never overwrites one")
    out.mkdir(parents=True, exist_ok=True)


async def backup(db: AsyncDatabase[Any], out: Path) -> dict[str, Any]:
    """Write a backup of ``db`` into the directory ``out`` (``prepare``d); its manifest."""
    names = _names(await db.list_collection_names())
    indexes = {name: [_index_spec(ix) async for ix in await db[name].list_indexes()
                      if ix["name"] != "_id_"] for name in names}  # (not inside a transaction)
    started = dt.datetime.now(dt.UTC)

    async def dump(session: AsyncClientSession) -> dict[str, Any]:
        return await _dump(db, names, out, session)
    collections, consistency = await read_at_one_moment(db, dump)
    for name, entry in collections.items():
        entry["indexes"] = indexes[name]
    manifest = {"format": FORMAT, "database": db.name, "started_at": started.isoformat(),
                "finished_at": dt.datetime.now(dt.UTC).isoformat(),
                "consistency": consistency, "collections": collections}
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    return manifest


async def _dump(db: AsyncDatabase[Any], names: list[str], out: Path,
                session: AsyncClientSession) -> dict[str, Any]:
    collections: dict[str, Any] = {}
    for name in names:
        digest, count = hashlib.sha256(), 0
        path = out / f"{name}.bson.gz"
        with gzip.open(path, "wb") as sink:
            cursor = db[name].with_options(codec_options=RAW).find({}, session=session)
            async for doc in cursor.sort("_id", 1):
                raw = doc.raw
                sink.write(raw)
                digest.update(raw)
                count += 1
        collections[name] = {"file": path.name, "documents": count,
                             "sha256": digest.hexdigest()}
    return collections


def _index_spec(index: Any) -> dict[str, Any]:
    spec = dict(index)
    spec.pop("v", None)
    spec.pop("ns", None)
    spec["key"] = list(dict(spec["key"]).items())
    return spec


def read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src} has no readable {MANIFEST}: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src} is not a {FORMAT} backup (format {manifest.get('format')!r})")
    return manifest  # type: ignore[no-any-return]


def _documents(path: Path) -> Iterator[RawBSONDocument]:
    """The documents of one file, read as they are needed (a collection may be large)."""
    with gzip.open(path, "rb") as source:
        yield from bson.decode_file_iter(source, RAW)


def _batches(path: Path) -> Iterator[list[RawBSONDocument]]:
    batch: list[RawBSONDocument] = []
    for doc in _documents(path):
        batch.append(doc)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def verify(src: Path, manifest: dict[str, Any]) -> None:
    """Every file is there, whole and as the manifest says (before anything is written)."""
    for entry in manifest["collections"].values():
        digest, count = hashlib.sha256(), 0
        try:
            for doc in _documents(src / entry["file"]):
                digest.update(doc.raw)
                count += 1
        except (OSError, EOFError, bson.errors.InvalidBSON) as exc:
            raise BackupError(f"{entry['file']} cannot be read: {exc}") from None
        if count != entry["documents"] or digest.hexdigest() != entry["sha256"]:
            raise BackupError(f"{entry['file']} does not match the manifest ({count} "
                              f"documents, {entry['documents']} expected): a damaged backup")


async def restore(db: AsyncDatabase[Any], src: Path, drop: bool = False) -> dict[str, Any]:
    """Restore the backup in ``src`` into ``db``; what was restored."""
    manifest = read_manifest(src)
    verify(src, manifest)
    names = list(manifest["collections"])
    present = set(await db.list_collection_names())
    occupied = [n for n in names if n in present
                and await db[n].estimated_document_count() > 0]
    if occupied and not drop:
        raise BackupError(f"database {db.name!r} already holds documents in "
                          f"{', '.join(occupied[:5])}{' …' if len(occupied) > 5 else ''}: "
                          "restore into an empty database, or pass --drop to replace them")
    for name in occupied:
        await db.drop_collection(name)
    restored: dict[str, int] = {}
    for name in names:
        entry = manifest["collections"][name]
        if name not in await db.list_collection_names():
            await db.create_collection(name)
        for batch in _batches(src / entry["file"]):
            await db[name].insert_many(batch, ordered=True, bypass_document_validation=True)
        restored[name] = await db[name].count_documents({})
        if restored[name] != entry["documents"]:
            raise BackupError(f"{name}: {restored[name]} documents after the restore, "
                              f"{entry['documents']} in the backup")
    await ensure_schema(db)
    for name in names:
        have = {ix["name"] async for ix in await db[name].list_indexes()}
        for spec in manifest["collections"][name]["indexes"]:
            if spec["name"] not in have:
                options = {k: v for k, v in spec.items() if k not in ("key", "name")}
                await db[name].create_index([tuple(k) for k in spec["key"]],
                                            name=spec["name"], **options)
    return {"database": db.name, "from": str(src), "taken": manifest["started_at"],
            "consistency": manifest["consistency"], "collections": len(restored),
            "documents": sum(restored.values())}

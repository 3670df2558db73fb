"""``keyun backup`` and ``keyun restore`` as an operator runs them: the real command against
the session's MongoDB-wire server, restored into a fresh database and compared."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import bson
import pytest
from pymongo import AsyncMongoClient

from tests.support import ROOT, keyun_env

KEYUN = [sys.executable, "-c", "from devstack.cli import main; raise SystemExit(main())"]


def _keyun(stores: Any, database: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=stores.redis_url,
                    KEYUN_MONGO_DB=database)
    return subprocess.run([*KEYUN, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)


async def _run(stores: Any, database: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: _keyun(stores, database, *args))


async def _contents(db: Any) -> dict[str, list[Any]]:
    """Every document of every collection, in _id order."""
    return {name: await db[name].find({}).sort("_id", 1).to_list()
            for name in sorted(await db.list_collection_names())
            if not name.startswith("system.")}


def _file_ids(directory: Path, name: str) -> list[Any]:
    with gzip.open(directory / f"{name}.bson.gz", "rb") as source:
        return [doc["_id"] for doc in bson.decode_file_iter(source)]


@pytest.mark.gen_test(timeout=600)
async def test_a_restored_backup_is_the_database_again(stores, tmp_path) -> None:
    """A database of its own, loaded with the demo province by ``keyun seed-demo`` (the
    session's database may still be taking writes other modules' servers sent before
    they stopped)."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(stores.mongo_uri, tz_aware=True)
    source, target = (client[f"{kind}_{uuid.uuid4().hex[:8]}"]
                      for kind in ("demo", "restored"))
    try:
        seeded_demo = await _run(stores, source.name, "seed-demo")
        assert seeded_demo.returncode == 0, seeded_demo.stderr
        before = await _contents(source)
        saved = await _run(stores, source.name, "backup", str(tmp_path / "b"))
        assert saved.returncode == 0, saved.stderr
        summary = json.loads(saved.stdout.strip().splitlines()[-1])
        manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
        counted = {name: entry["documents"] for name, entry in manifest["collections"].items()}
        assert counted == {name: len(docs) for name, docs in before.items()}
        assert summary["documents"] == sum(counted.values())

        loaded = await _run(stores, target.name, "restore", str(tmp_path / "b"))
        assert loaded.returncode == 0, loaded.stderr
        after = await _contents(target)
        assert sorted(after) == sorted(before)
        for name, docs in before.items():
            assert after[name] == docs, name
        # the schema came back too: validators and every index
        for name in ("orders", "tickets", "members"):
            info = await target.command("listCollections", filter={"name": name})
            assert info["cursor"]["firstBatch"][0]["options"].get("validator"), name
            assert sorted(await target[name].index_information()) == \
                sorted(await source[name].index_information()), name

        # a database with data is not overwritten unless asked
        again = await _run(stores, target.name, "restore", str(tmp_path / "b"))
        assert again.returncode == 2 and "--drop" in again.stderr
        await target.stations.delete_many({})
        replaced = await _run(stores, target.name, "restore", str(tmp_path / "b"), "--drop")
        assert replaced.returncode == 0, replaced.stderr
        assert await target.stations.count_documents({}) == len(before["stations"])

        # a damaged backup is refused before anything is written
        damaged = tmp_path / "b" / "stations.bson.gz"
        damaged.write_bytes(gzip.compress(gzip.decompress(damaged.read_bytes())[:-7]))
        empty = client[f"restored_{uuid.uuid4().hex[:8]}"]
        refused = await _run(stores, empty.name, "restore", str(tmp_path / "b"))
        assert refused.returncode == 2 and "stations.bson.gz" in refused.stderr
        assert await empty.list_collection_names() == []
        # nor is a backup written over an old one
        over = await _run(stores, source.name, "backup", str(tmp_path / "b"))
        assert over.returncode == 2 and "not empty" in over.stderr
    finally:
        for db in (source, target):
            await client.drop_database(db.name)
        await client.close()


@pytest.mark.gen_test(timeout=300)
async def test_a_backup_taken_while_writing_is_of_one_moment(stores, tmp_path) -> None:
    """Writers add a pair of documents in one transaction — one to ``a`` (read first and
    padded, so reading it takes a while), one to ``b`` — while the backup runs: every pair
    is in the backup whole or not at all."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(stores.mongo_uri, tz_aware=True)
    db = client[f"moment_{uuid.uuid4().hex[:8]}"]
    try:
        await db.a.insert_many([{"_id": f"pad-{i:06d}", "pad": "x" * 200}
                                for i in range(30_000)])
        await db.create_collection("b")
        stop, started = asyncio.Event(), asyncio.Event()
        written = 0

        async def write_pairs() -> None:
            nonlocal written
            while not stop.is_set():
                key = f"pair-{written:06d}"
                async with client.start_session() as session:
                    async with await session.start_transaction():
                        await db.a.insert_one({"_id": key}, session=session)
                        await db.b.insert_one({"_id": key}, session=session)
                written += 1
                if written == 20:
                    started.set()

        writers = asyncio.ensure_future(write_pairs())
        await started.wait()
        result = await _run(stores, db.name, "backup", str(tmp_path / "m"))
        stop.set()
        await writers
        assert result.returncode == 0, result.stderr
        pairs_a = {i for i in _file_ids(tmp_path / "m", "a") if i.startswith("pair-")}
        pairs_b = set(_file_ids(tmp_path / "m", "b"))
        assert pairs_a == pairs_b and len(pairs_b) >= 20
        assert written > len(pairs_b), "the writers went on during the backup"
    finally:
        await client.drop_database(db.name)
        await client.close()

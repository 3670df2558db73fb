"""A process that runs the ledger's posting job once against a database (a stand-in for the
Keyun process holding the job's lease): ``python -m tests.ledger_poster URI DB``, with
``KEYUN_FAILPOINTS`` to stop it where a test kills it."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from pymongo import AsyncMongoClient

from server import failpoints
from server.services.alerts import AlertService
from server.services.audit import AuditService
from server.services.clearing import ClearingRules
from server.services.ledger import Ledger


async def main(uri: str, name: str) -> None:
    failpoints.configure(os.environ.get("KEYUN_FAILPOINTS", ""))
    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
    db = client[name]
    ledger = Ledger(db, ClearingRules(db, AuditService(db)), AlertService(db))
    print("posted", await ledger.run(), flush=True)
    await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="%(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))

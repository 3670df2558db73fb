"""Several MongoDB writes as one: all of them or none (snapshot reads, majority writes);
and many reads as of one moment (``read_at_one_moment``, for a backup).

A transaction that meets a concurrent one on the same documents or index keys fails with a
``TransientTransactionError`` label; it is run again from the start, a few times, with a short
pause. Any other error aborts it and is raised unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, OperationFailure
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

T = TypeVar("T")

ATTEMPTS = 5
# a transaction outlived MongoDB's limit (transactionLifetimeLimitSeconds), or was aborted for it
TOO_LONG = {290, 251, 244}


async def transact(db: AsyncDatabase, work: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
    """Run ``work(session)`` in one transaction and commit it; return what it returned."""
    for attempt in range(ATTEMPTS):
        try:
            async with db.client.start_session() as session:
                async with await session.start_transaction(
                        read_concern=ReadConcern("snapshot"),
                        write_concern=WriteConcern("majority")):
                    return await work(session)
        except (OperationFailure, ConnectionFailure) as exc:
            if not exc.has_error_label("TransientTransactionError") or \
                    attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


async def read_at_one_moment(db: AsyncDatabase,
                             work: Callable[[AsyncClientSession], Awaitable[T]]
                             ) -> tuple[T, str]:
    """Run read-only ``work(session)`` so that all its reads see the database as of one
    moment: in a transaction with snapshot reads, or — if that outlives MongoDB's transaction
    limit (60 s by default) — again in a snapshot session (one cluster time, no lifetime
    limit; MongoDB keeps snapshot history for 300 s by default). Returns what ``work``
    returned and which of the two it was. (SecantusDB isolates the transaction but not the
    snapshot session: docs/secantusdb.md.)"""
    async with db.client.start_session() as session:
        try:
            async with await session.start_transaction(
                    read_concern=ReadConcern("snapshot"),
                    write_concern=WriteConcern("majority")):
                return await work(session), "transaction (read concern snapshot)"
        except OperationFailure as exc:
            if exc.code not in TOO_LONG:
                raise
    async with db.client.start_session(snapshot=True) as session:
        return await work(session), "snapshot session"

"""Several MongoDB writes as one: all of them or none (snapshot reads, majority writes).

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

"""One page of a list that back-office tables show: ``offset`` and ``limit`` in the query,
``total`` in the answer, the database doing the skipping and the counting (SPEC §4b: every
table pages and filters on the server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.schema import integer

MAX_OFFSET = 100_000
PAGE_QUERY: dict[str, Any] = {
    "offset": integer(0, MAX_OFFSET, description="rows to skip (the page's first row)"),
    "limit": integer(1, 500, description="rows in the page"),
}
TOTAL: dict[str, Any] = integer(0, description="rows matching the filters, over all pages")


@dataclass(frozen=True)
class Page:
    offset: int = 0
    limit: int = 50

    @classmethod
    def of(cls, query: dict[str, Any], default_limit: int = 50) -> Page:
        return cls(int(query.get("offset", 0)), int(query.get("limit", default_limit)))

    def cut(self, rows: list[Any]) -> tuple[list[Any], int]:
        """This page of a list made in memory (from several sources, or one document's
        array), and how long the list is."""
        return rows[self.offset:self.offset + self.limit], len(rows)


FIRST_PAGE = Page()


async def find_page(collection: Any, query: dict[str, Any], sort: list[tuple[str, int]],
                    page: Page, projection: dict[str, Any] | None = None,
                    session: Any = None) -> tuple[list[dict[str, Any]], int]:
    """One page of a collection's documents matching ``query`` and how many match in all
    (in ``session``'s snapshot when given)."""
    docs = await collection.find(query, projection, session=session).sort(sort).skip(
        page.offset).limit(page.limit).to_list()
    if page.offset == 0 and len(docs) < page.limit:
        return docs, len(docs)  # the whole list fits this page: no count needed
    return docs, await collection.count_documents(query, session=session)

"""A table as a file finance opens: CSV (UTF-8 with a BOM, so spreadsheets read the Chinese)
or XLSX (openpyxl), a header row then the rows; money columns in yuan.

A :class:`Source` is what a back-office export reads: the sheet, how many rows there are and
the rows themselves, read in order in batches (the export job reports its progress as it
goes, see :mod:`server.services.exports`). Building the file is CPU work: callers run
:meth:`Sheet.file` in an executor, never on the IOLoop.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

FORMATS = {"csv": "text/csv; charset=utf-8",
           "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


@dataclass(frozen=True)
class Sheet:
    title: str
    columns: list[str]
    money: frozenset[int] = field(default_factory=frozenset)  # columns holding fen

    def file(self, fmt: str, rows: list[list[Any]]) -> bytes:
        return self._csv(rows) if fmt == "csv" else self._xlsx(rows)

    def _csv(self, rows: list[list[Any]]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.columns)
        for row in rows:
            writer.writerow([yuan(v) if i in self.money else v for i, v in enumerate(row)])
        return ("\ufeff" + out.getvalue()).encode("utf-8")

    def _xlsx(self, rows: list[list[Any]]) -> bytes:
        from openpyxl import Workbook
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Font

        book = Workbook(write_only=True)  # streams rows: a year of invoices fits in memory
        sheet = book.create_sheet(self.title)
        bold = Font(bold=True)
        header = []
        for name in self.columns:
            cell = WriteOnlyCell(sheet, value=name)
            cell.font = bold
            header.append(cell)
        sheet.append(header)
        for row in rows:
            out: list[Any] = []
            for i, value in enumerate(row):
                if i in self.money and value is not None:
                    cell = WriteOnlyCell(sheet, value=value / 100)
                    cell.number_format = "0.00"
                    out.append(cell)
                else:
                    out.append(value)
            sheet.append(out)
        buffer = io.BytesIO()
        book.save(buffer)
        return buffer.getvalue()


@dataclass(frozen=True)
class Source:
    """The rows of one export: the sheet they fill, the file's name (without the format),
    how many rows match and the rows in order."""

    sheet: Sheet
    name: str
    count: Callable[[], Awaitable[int]]
    rows: Callable[[], AsyncIterator[list[Any]]]

"""A table as a file finance opens: CSV (UTF-8 with a BOM, so spreadsheets read the Chinese)
or XLSX (openpyxl), a header row then the rows; money columns in yuan."""

from __future__ import annotations

import csv
import io
from typing import Any


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def csv_bytes(columns: list[str], rows: list[list[Any]], money: set[int] = frozenset()
              ) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([yuan(v) if i in money else v for i, v in enumerate(row)])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def xlsx_bytes(title: str, columns: list[str], rows: list[list[Any]],
               money: set[int] = frozenset()) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    sheet = book.active
    sheet.title = title
    sheet.append(columns)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append([v / 100 if i in money else v for i, v in enumerate(row)])
        for i in money:
            sheet.cell(sheet.max_row, i + 1).number_format = "0.00"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()

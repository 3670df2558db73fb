"""Files from the 运政 system: CSV (UTF-8, or GB18030 as Excel in China saves it) or XLSX,
one record per row under a header row. Headers are the Chinese labels of the guideline's
table 4-1 (``客运站代码``) or the API's field names (``code``); money under a Chinese label is
in yuan (``45.50``), under a field name in fen. Columns we do not know are ignored and
listed. A cell becomes the value its field's schema wants; an empty cell is no value.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from openpyxl import load_workbook

from server.errors import DomainError
from server.services.kinds import Kind

MAX_ROWS = 200_000
_TRUE = {"1", "true", "yes", "y", "是", "√", "t"}
_FALSE = {"0", "false", "no", "n", "否", "×", "f", ""}
_SPLIT = re.compile(r"[,，;；|、\s]+")
# words the 运政 system writes for our enumerations
_WORDS = {
    "status": {"正常": "active", "有效": "active", "营运": "active", "暂停": "suspended",
               "停运": "suspended", "撤销": "withdrawn", "注销": "withdrawn",
               "停用": "withdrawn"},
    "gender": {"男": "M", "女": "F"},
}


@dataclass
class Table:
    headers: list[str]
    rows: list[tuple[int, list[Any]]]  # (row number in the file, cells)


@dataclass
class Rows:
    """A file's rows as records, and what was wrong with the rest."""

    docs: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)


def read_table(body: bytes) -> Table:
    """The header and rows of a CSV or XLSX file (an XLSX's first sheet)."""
    if body[:4] == b"PK\x03\x04":
        return _read_xlsx(body)
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = body.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise DomainError("IMPORT_UNREADABLE", "The CSV is neither UTF-8 nor GB18030.")
    if "\x00" in text:
        raise DomainError("IMPORT_UNREADABLE")
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise DomainError("IMPORT_UNREADABLE", f"The CSV cannot be read: {exc}.") from None
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise DomainError("IMPORT_UNREADABLE", "The file has no header row.")
    return Table([h.strip() for h in lines[0]],
                 [(n, row) for n, row in enumerate(lines[1:], start=2)
                  if any(cell.strip() for cell in row)])


def _read_xlsx(body: bytes) -> Table:
    try:
        book = load_workbook(io.BytesIO(body), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise DomainError("IMPORT_UNREADABLE", f"The XLSX cannot be read: "
                                               f"{type(exc).__name__}.") from None
    try:
        sheet = book.worksheets[0]
        rows = sheet.iter_rows(values_only=True)
        header = next(rows, None)
        if not header or not any(h is not None and str(h).strip() for h in header):
            raise DomainError("IMPORT_UNREADABLE", "The first sheet has no header row.")
        out = []
        for n, row in enumerate(rows, start=2):
            if n > MAX_ROWS + 1:
                raise DomainError("IMPORT_UNREADABLE", f"At most {MAX_ROWS} rows per file.")
            if any(c is not None and str(c).strip() for c in row):
                out.append((n, list(row)))
        return Table([str(h).strip() if h is not None else "" for h in header], out)
    finally:
        book.close()


def columns(kind: Kind, headers: list[str]) -> tuple[dict[int, tuple[str, bool]], list[str]]:
    """Column index → (field, in yuan), and the headers ignored."""
    by_label = {label: name for name, label in kind.labels.items()}
    known = set(kind.properties) | {f"prices.{t}" for t in
                                    kind.properties.get("prices", {}).get("properties", {})}
    out: dict[int, tuple[str, bool]] = {}
    ignored = []
    for i, header in enumerate(headers):
        name = re.sub(r"[(（]元[)）]$", "", header).strip()
        if name in by_label:
            field_name = by_label[name]
            out[i] = (field_name, field_name in kind.yuan)
        elif header in known:
            out[i] = (header, False)
        elif header:
            ignored.append(header)
    return out, ignored


def _schema_of(kind: Kind, name: str) -> dict[str, Any]:
    if name.startswith("prices."):
        return {"type": "integer"}
    return kind.properties[name]


def cell_value(kind: Kind, name: str, raw: Any, yuan: bool) -> Any:
    """The value a cell holds for ``name``, or ValueError saying why it cannot be one."""
    schema = _schema_of(kind, name)
    kind_of = schema.get("type")
    if isinstance(raw, str):
        raw = raw.strip()
    if yuan:
        try:
            amount = Decimal(str(raw))
        except InvalidOperation:
            raise ValueError("not an amount of yuan") from None
        fen = amount * 100
        if fen != fen.to_integral_value():
            raise ValueError("more than two decimals of yuan")
        return int(fen)
    if kind_of == "integer":
        try:
            number = Decimal(str(raw))
        except InvalidOperation:
            raise ValueError("not a whole number") from None
        if number != number.to_integral_value():
            raise ValueError("not a whole number")
        return int(number)
    if kind_of == "number":
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError("not a number") from None
    if kind_of == "boolean":
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("not yes or no")
    if kind_of == "array":
        return [part for part in _SPLIT.split(str(raw)) if part]
    if isinstance(raw, dt.datetime):
        return raw.strftime("%H:%M") if schema.get("pattern", "").startswith("^([01]") \
            else raw.date().isoformat()
    if isinstance(raw, dt.date):
        return raw.isoformat()
    if isinstance(raw, dt.time):
        return raw.strftime("%H:%M")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # a code Excel took for a number
    text = str(raw).strip()
    return _WORDS.get(name, {}).get(text, text)


def records(kind: Kind, table: Table) -> Rows:
    """Each row as the fields it gives (nested ``prices``), or its first bad cell."""
    found, ignored = columns(kind, table.headers)
    out = Rows(ignored_columns=ignored)
    present = {name for name, _ in found.values()}
    needed = [k for k in kind.required if k != "stops"]
    lacking = [k for k in needed if k not in present
               and not (k == "prices" and "prices.adult" in present)]
    if lacking:
        raise DomainError("IMPORT_COLUMNS_MISSING", columns=[
            kind.labels.get(k, k) for k in lacking])
    for n, cells in table.rows:
        doc: dict[str, Any] = {}
        for i, (name, yuan) in found.items():
            raw = cells[i] if i < len(cells) else None
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            try:
                value = cell_value(kind, name, raw, yuan)
            except ValueError as exc:
                out.errors.append({"row": n, "field": name, "code": "INVALID_VALUE",
                                   "message": f"{kind.labels.get(name, name)}: {exc}."})
                break
            if name.startswith("prices."):
                doc.setdefault("prices", {})[name.split(".", 1)[1]] = value
            else:
                doc[name] = value
        else:
            out.docs.append((n, doc))
    return out

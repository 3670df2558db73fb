"""Daily statements: parse the providers' bill files and match them to our payment attempts.

- WeChat Pay trade bill: CSV whose every field starts with a back-tick (so spreadsheets keep
  long numbers), a header row, the trade rows, then a summary header and summary row.
- Alipay trade bill: a zip of GBK CSV files; the 业务明细 file has ``#`` comment lines around
  a header row and the trade rows.

``match`` compares by ``out_trade_no`` (the providers' ``matching_id``): matched, amount
differs, only at the provider, only with us.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class StatementLine:
    out_trade_no: str
    transaction_id: str
    amount: int  # fen
    state: str
    fee: int = 0
    kind: str = "payment"  # or "refund": a refund row names its out_refund_no
    out_refund_no: str = ""
    at: str = ""  # the provider's time of the trade or refund, as written


@dataclass
class Match:
    matched: list[str] = field(default_factory=list)
    amount_differs: list[dict[str, Any]] = field(default_factory=list)
    only_provider: list[str] = field(default_factory=list)
    only_ours: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.amount_differs or self.only_provider or self.only_ours)


def _fen(text: str) -> int:
    return int((Decimal(text.strip() or "0") * 100).to_integral_value())


def parse_wechat_tradebill(text: str) -> tuple[list[StatementLine], dict[str, str]]:
    """Trade rows and the summary of a WeChat Pay trade bill."""
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    rows = [[cell.lstrip("`") for cell in row] for row in rows if row]
    header = rows[0]
    lines, summary = [], {}
    i = 1
    while i < len(rows) and rows[i][0] != "总交易单数":
        rec = dict(zip(header, rows[i], strict=False))
        if rec["交易状态"] == "REFUND":  # a refund row: its own number and amount
            lines.append(StatementLine(rec["商户订单号"], rec["微信订单号"],
                                       _fen(rec.get("退款金额", "0")), rec.get("退款状态", ""),
                                       _fen(rec.get("手续费", "0")), "refund",
                                       rec.get("商户退款单号", ""), rec.get("交易时间", "")))
        else:
            lines.append(StatementLine(rec["商户订单号"], rec["微信订单号"],
                                       _fen(rec["订单金额"]), rec["交易状态"],
                                       _fen(rec.get("手续费", "0")),
                                       at=rec.get("交易时间", "")))
        i += 1
    if i + 1 < len(rows):
        summary = dict(zip(rows[i], rows[i + 1], strict=False))
    return lines, summary


def parse_alipay_bill(data: bytes) -> list[StatementLine]:
    """Trade rows of an Alipay bill zip (GBK CSV inside)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if "明细" in _decode_name(n)
                    and "汇总" not in _decode_name(n))
        text = archive.read(name).decode("gbk")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].startswith("#")]
    header = [h.strip() for h in rows[0]]
    lines = []
    for row in rows[1:]:
        rec = dict(zip(header, [c.strip() for c in row], strict=False))
        if not rec.get("商户订单号"):
            continue
        refund = rec.get("业务类型", "") == "退款"  # amounts negative, its request number
        lines.append(StatementLine(rec["商户订单号"], rec.get("支付宝交易号", ""),
                                   abs(_fen(rec.get("订单金额（元）", "0"))),
                                   rec.get("业务类型", ""), abs(_fen(rec.get("服务费（元）", "0"))),
                                   "refund" if refund else "payment",
                                   rec.get("退款批次号/请求号", "") if refund else "",
                                   rec.get("完成时间", "")))
    return lines


def _decode_name(name: str) -> str:
    try:  # zip names without the UTF-8 flag come as cp437
        return name.encode("cp437").decode("gbk")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return name


def match(lines: list[StatementLine], ours: list[dict[str, Any]]) -> Match:
    """Payment rows against our paid attempts (refund rows are refunds: not matched here)."""
    result = Match()
    by_no = {a["out_trade_no"]: a for a in ours}
    seen = set()
    for line in lines:
        if line.kind == "refund":
            continue
        attempt = by_no.get(line.out_trade_no)
        if attempt is None:
            result.only_provider.append(line.out_trade_no)
            continue
        seen.add(line.out_trade_no)
        if attempt["amount"] != line.amount:
            result.amount_differs.append({"out_trade_no": line.out_trade_no,
                                          "ours": attempt["amount"], "theirs": line.amount})
        else:
            result.matched.append(line.out_trade_no)
    result.only_ours = sorted(set(by_no) - seen)
    return result

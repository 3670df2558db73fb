"""An issued electronic invoice as a PDF (电子发票（普通发票）): header with its number and
date, buyer and seller, a line per item (tax-exempt passenger transport), the total in
figures and in capital numerals (大写). Drawn with fpdf2 in a CJK font from the system
(Debian ``fonts-noto-cjk``); CPU-bound, so callers run it in an executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.clock import LOCAL_TZ
from server.tables import yuan

DIGITS = "零壹贰叁肆伍陆柒捌玖"
UNITS = ["", "拾", "佰", "仟"]
GROUPS = ["", "万", "亿", "万亿"]
SIMPLIFIED_CHINESE = 2  # Noto Sans CJK SC in the collection (JP, KR, SC, TC, HK, …)


def capital_amount(fen: int) -> str:
    """Fen in capital numerals as invoices write them: 12345 → 壹佰贰拾叁圆肆角伍分."""
    if fen == 0:
        return "零圆整"
    sign = "（负数）" if fen < 0 else ""
    fen = abs(fen)
    yuan, jiao, cents = fen // 100, fen // 10 % 10, fen % 10
    words, pending_zero = "", False
    digits = str(yuan) if yuan else ""
    for i, char in enumerate(digits):
        place = len(digits) - 1 - i  # 0: ones, 4: 万, 8: 亿
        digit = int(char)
        if digit == 0:
            pending_zero = True
        else:
            if pending_zero and words:
                words += "零"
            pending_zero = False
            words += DIGITS[digit] + UNITS[place % 4]
        if place % 4 == 0 and place and digits[max(0, i - 3):i + 1].strip("0"):
            words += GROUPS[place // 4]  # a group with a digit in it ends with 万 / 亿
    if words:
        words += "圆"
    if not jiao and not cents:
        return sign + words + "整"
    if jiao:
        words += ("零" if pending_zero and words else "") + DIGITS[jiao] + "角"
    elif words:
        words += "零"
    if cents:
        words += DIGITS[cents] + "分"
    return sign + words


def render(invoice: dict[str, Any], seller: dict[str, str], font: Path) -> bytes:
    """The PDF of an issued invoice."""
    from fpdf import FPDF  # (imported here: only the invoice job draws)

    pdf = FPDF(orientation="L", unit="mm", format=(140, 210))
    pdf.set_auto_page_break(auto=True, margin=8)
    pdf.set_title(f"电子发票 {invoice['invoice_no']}")
    pdf.set_author(seller["name"])
    pdf.add_page()
    pdf.add_font("cjk", fname=str(font),
                 **({"collection_font_number": SIMPLIFIED_CHINESE}
                    if str(font).endswith(".ttc") else {}))
    red = invoice["kind"] == "red"
    pdf.set_text_color(160, 0, 0) if red else pdf.set_text_color(120, 60, 0)
    pdf.set_font("cjk", size=15)
    pdf.cell(0, 9, "电子发票（普通发票）" + ("　红字" if red else ""), align="C",
             new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("cjk", size=8.5)
    issued = invoice["issued_at"].astimezone(LOCAL_TZ)
    pdf.cell(0, 5, f"发票号码：{invoice['invoice_no']}", align="R", new_x="LMARGIN",
             new_y="NEXT")
    pdf.cell(0, 5, f"开票日期：{issued:%Y年%m月%d日}", align="R", new_x="LMARGIN",
             new_y="NEXT")
    buyer = invoice["buyer"]
    half = (pdf.w - pdf.l_margin - pdf.r_margin) / 2
    pdf.multi_cell(half, 5, f"购买方\n名称：{buyer['title']}\n统一社会信用代码/纳税人识别号："
                   f"{buyer.get('tax_no') or '—'}", border=1, new_x="RIGHT", new_y="TOP")
    pdf.multi_cell(half, 5, f"销售方\n名称：{seller['name']}\n统一社会信用代码/纳税人识别号："
                   f"{seller['tax_no']}", border=1, new_x="LMARGIN", new_y="NEXT")
    widths = (62, 70, 22, 16, 22)
    pdf.set_font("cjk", size=8)
    for title, width in zip(("项目名称", "说明", "金额", "税率", "税额"), widths, strict=True):
        pdf.cell(width, 6, title, border=1, align="C")
    pdf.ln()
    for line in invoice["lines"]:
        pdf.cell(widths[0], 6, line["name"], border=1)
        pdf.cell(widths[1], 6, line.get("detail", ""), border=1)
        pdf.cell(widths[2], 6, yuan(line["amount"]), border=1, align="R")
        pdf.cell(widths[3], 6, line.get("tax_rate", "免税"), border=1, align="C")
        pdf.cell(widths[4], 6, "***", border=1, align="C")
        pdf.ln()
    pdf.set_font("cjk", size=9)
    pdf.cell(sum(widths[:2]), 7, f"价税合计（大写）　{capital_amount(invoice['total'])}",
             border=1)
    pdf.cell(sum(widths[2:]), 7, f"（小写）¥{yuan(invoice['total'])}", border=1, align="R")
    pdf.ln()
    pdf.set_font("cjk", size=8)
    note = f"订单号：{invoice['order_no']}"
    if red:
        note += f"　被红冲蓝字发票号码：{invoice.get('original_no', '')}"
    pdf.multi_cell(0, 5, f"备注：{note}", border=1)
    return bytes(pdf.output())


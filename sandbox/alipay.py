"""Alipay sandbox: ``/gateway.do`` with RSA2 both ways, and form notifications.

The payer's side: ``POST /_sandbox/alipay/pay`` with the signed order parameters the app or
WAP page would hand to Alipay; the sandbox verifies the merchant's signature, records the
trade as paid and POSTs the signed ``trade_status_sync`` notice to ``notify_url`` until it
answers exactly ``success`` (retries compressed). Refunds are idempotent by
``out_request_no`` and settle a moment after the call (answered ``fund_change: N``;
``alipay.trade.fastpay.refund.query`` says ``REFUND_SUCCESS`` once the money is back); a test
can make the next refund fail (``ACQ.SELLER_BALANCE_NOT_ENOUGH``). The gateway takes GET as
well as POST, as the real one does. A day's bill exists from the next day on
(``isp.bill_not_exist`` before, and for a day without trades).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import uuid
import zipfile
from typing import Any
from urllib.parse import parse_qsl, urlencode

from alipay.aop.api.util.SignatureUtils import get_sign_content, sign_with_rsa2
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.web import RequestHandler

from payments.alipay import fen, verify_rsa2, yuan

LOCAL = dt.timezone(dt.timedelta(hours=8))
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)  # real: 4 m, 10 m, 10 m, 1 h, 2 h, 6 h, 15 h


class AlipayState:
    def __init__(self, app_id: str, seller_id: str, app_public_key: str,
                 alipay_private_key: str) -> None:
        self.app_id, self.seller_id = app_id, seller_id
        self.app_public_key, self.private_key = app_public_key, alipay_private_key
        self.trades: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.delivered: list[str] = []
        self.faults = {"drop": 0, "duplicate": 0, "delay_ms": 0}
        self.refund_outcomes: list[str] = []  # the next refunds: FAIL refuses one
        self.refund_delay = 0.3


class Base(RequestHandler):
    @property
    def ali(self) -> AlipayState:
        return self.application.settings["alipay"]  # type: ignore[no-any-return]

    def verified_params(self) -> dict[str, str] | None:
        raw = self.request.body if self.request.method == "POST" else \
            self.request.query.encode()
        try:
            params = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return None
        signature = params.pop("sign", "")
        if params.get("sign_type") != "RSA2" or params.get("app_id") != self.ali.app_id or \
                not verify_rsa2(self.ali.app_public_key, get_sign_content(params).encode(),
                                signature):
            return None
        return params


class GatewayHandler(Base):
    def get(self) -> None:  # the SDKs and WAP pages may send the parameters as a query
        self.post()

    def post(self) -> None:
        params = self.verified_params()
        method = (params or {}).get("method", "alipay.trade.query")
        key = method.replace(".", "_") + "_response"
        if params is None:
            self.respond(key, {"code": "40002", "msg": "Invalid Arguments",
                               "sub_code": "isv.invalid-signature", "sub_msg": "验签出错"})
            return
        biz = json.loads(params.get("biz_content") or "{}")
        if method == "alipay.data.dataservice.bill.downloadurl.query":
            day = str(biz.get("bill_date", ""))
            if day >= dt.datetime.now(LOCAL).date().isoformat() or (not any(
                    t.get("paid_at", "").startswith(day) for t in self.ali.trades.values()) \
                    and not any(r.get("refunded_at", "").startswith(day)
                                for r in self.ali.refunds.values())):
                self.respond(key, {"code": "40004", "msg": "Business Failed",
                                   "sub_code": "isp.bill_not_exist", "sub_msg": "账单不存在"})
                return
            token = uuid.uuid4().hex
            self.application.settings["bills"][token] = bill_zip(self.ali, biz["bill_date"])
            self.respond(key, {"code": "10000", "msg": "Success", "bill_download_url":
                               f"{self.request.protocol}://{self.request.host}"
                               f"/_sandbox/alipay/bill/{token}"})
            return
        trade = self.ali.trades.get(str(biz.get("out_trade_no", "")))
        if trade is None:
            self.respond(key, {"code": "40004", "msg": "Business Failed",
                               "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"})
            return
        if method == "alipay.trade.query":
            self.respond(key, {"code": "10000", "msg": "Success", **view(trade)})
        elif method == "alipay.trade.close":
            if trade["status"] == "WAIT_BUYER_PAY":
                trade["status"] = "TRADE_CLOSED"
                self.respond(key, {"code": "10000", "msg": "Success",
                                   "out_trade_no": trade["out_trade_no"]})
            else:
                self.respond(key, {"code": "40004", "msg": "Business Failed",
                                   "sub_code": "ACQ.TRADE_STATUS_ERROR"})
        elif method == "alipay.trade.refund":
            self.refund(key, trade, biz)
        elif method == "alipay.trade.fastpay.refund.query":
            refund = self.ali.refunds.get(str(biz.get("out_request_no", "")))
            answer = {"code": "10000", "msg": "Success", "trade_no": trade["trade_no"],
                      "out_trade_no": trade["out_trade_no"],
                      "out_request_no": str(biz.get("out_request_no", ""))}
            if refund is not None and refund["status"] == "REFUND_SUCCESS":
                answer.update(refund_status="REFUND_SUCCESS",
                              refund_amount=yuan(refund["amount"]),
                              total_amount=yuan(trade["amount"]))
            self.respond(key, answer)
        else:
            self.respond(key, {"code": "40004", "msg": "Business Failed",
                               "sub_code": "ACQ.SYSTEM_ERROR"})

    def refund(self, key: str, trade: dict[str, Any], biz: dict[str, Any]) -> None:
        request_no = str(biz.get("out_request_no", ""))
        existing = self.ali.refunds.get(request_no)
        if existing is None:
            amount = fen(str(biz.get("refund_amount", "0")))
            already = sum(r["amount"] for r in self.ali.refunds.values()
                          if r["out_trade_no"] == trade["out_trade_no"])
            if trade["status"] != "TRADE_SUCCESS" or amount <= 0 or \
                    already + amount > trade["amount"]:
                self.respond(key, {"code": "40004", "msg": "Business Failed",
                                   "sub_code": "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"})
                return
            if self.ali.refund_outcomes and self.ali.refund_outcomes[0] == "FAIL":
                self.ali.refund_outcomes.pop(0)
                self.respond(key, {"code": "40004", "msg": "Business Failed",
                                   "sub_code": "ACQ.SELLER_BALANCE_NOT_ENOUGH",
                                   "sub_msg": "卖家余额不足"})
                return
            existing = self.ali.refunds[request_no] = {
                "out_trade_no": trade["out_trade_no"], "out_request_no": request_no,
                "amount": amount, "status": "PROCESSING"}

            async def settle() -> None:
                await asyncio.sleep(self.ali.refund_delay)
                existing["status"] = "REFUND_SUCCESS"
                existing["refunded_at"] = dt.datetime.now(LOCAL).strftime("%Y-%m-%d %H:%M:%S")
            asyncio.get_running_loop().create_task(settle())
        self.respond(key, {"code": "10000", "msg": "Success", "trade_no": trade["trade_no"],
                           "out_trade_no": trade["out_trade_no"], "fund_change": "N",
                           "refund_fee": yuan(existing["amount"])})

    def respond(self, key: str, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        signature = sign_with_rsa2(self.ali.private_key, text, "utf-8")
        self.set_header("Content-Type", "application/json;charset=utf-8")
        self.finish(f'{{"{key}":{text},"sign":"{signature}"}}')


def view(trade: dict[str, Any]) -> dict[str, Any]:
    return {"trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
            "trade_status": trade["status"], "total_amount": yuan(trade["amount"]),
            "buyer_logon_id": "159****5620"}


class PayHandler(Base):
    """The payer pays with the signed order the merchant gave the app or the WAP page."""

    def post(self) -> None:
        params = self.verified_params()
        if params is None:
            self.set_status(400)
            self.finish({"error": "order parameters not signed by the merchant"})
            return
        biz = json.loads(params["biz_content"])
        no = str(biz["out_trade_no"])
        trade = self.ali.trades.get(no)
        if trade is None:
            trade = self.ali.trades[no] = {
                "out_trade_no": no, "trade_no": dt.datetime.now(LOCAL).strftime("%Y%m%d")
                + uuid.uuid4().hex[:20], "amount": fen(biz["total_amount"]),
                "status": "WAIT_BUYER_PAY", "notify_url": params.get("notify_url", "")}
        trade["status"] = "TRADE_SUCCESS"
        trade.setdefault("paid_at", dt.datetime.now(LOCAL).strftime("%Y-%m-%d %H:%M:%S"))
        faults = self.ali.faults
        if faults["drop"] > 0:
            faults["drop"] -= 1
        else:
            copies = max(1, faults["duplicate"])
            faults["duplicate"] = 0
            for _ in range(copies):
                asyncio.get_running_loop().create_task(self._notify(trade))
        self.finish({"out_trade_no": no, "trade_status": trade["status"]})

    async def _notify(self, trade: dict[str, Any]) -> None:
        if self.ali.faults["delay_ms"]:
            await asyncio.sleep(self.ali.faults["delay_ms"] / 1000)
        now = dt.datetime.now(LOCAL).strftime("%Y-%m-%d %H:%M:%S")
        fields = {"gmt_create": now, "gmt_payment": now, "notify_time": now,
                  "notify_type": "trade_status_sync", "notify_id": uuid.uuid4().hex,
                  "charset": "utf-8", "version": "1.0", "app_id": self.ali.app_id,
                  "seller_id": self.ali.seller_id, "out_trade_no": trade["out_trade_no"],
                  "trade_no": trade["trade_no"], "trade_status": trade["status"],
                  "total_amount": yuan(trade["amount"]),
                  "receipt_amount": yuan(trade["amount"]), "buyer_id": "2088102177846880"}
        fields["sign"] = sign_with_rsa2(self.ali.private_key, get_sign_content(fields), "utf-8")
        fields["sign_type"] = "RSA2"
        body = urlencode(fields)
        for delay in (0.0, *RETRY_DELAYS):
            await asyncio.sleep(delay)
            try:
                resp = await AsyncHTTPClient().fetch(
                    trade["notify_url"], method="POST", body=body, raise_error=False,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
                if resp.body == b"success":
                    self.ali.delivered.append(trade["out_trade_no"])
                    return
            except (HTTPClientError, OSError):
                continue


def bill_zip(ali: AlipayState, day: str) -> bytes:
    """A trade bill as Alipay ships it: GBK CSV files in a zip, comment lines around."""
    header = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,"
              "终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,"
              "支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,"
              "卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注")
    lines = ["#支付宝业务明细查询", f"#账号：[{ali.seller_id}]",
             f"#起始日期：[{day} 00:00:00]   终止日期：[{day} 23:59:59]",
             "#-----------------------------------------业务明细列表----------------------------------------",
             header]
    for trade in ali.trades.values():
        if trade["status"] != "TRADE_SUCCESS" or not trade.get("paid_at", "").startswith(day):
            continue
        amount = yuan(trade["amount"])
        lines.append(f"{trade['trade_no']},{trade['out_trade_no']},交易,客运车票,"
                     f"{trade['paid_at']},{trade['paid_at']},,,,,159****5620,{amount},{amount},"
                     "0.00,0.00,0.00,0.00,"
                     f"0.00,,0.00,0.00,,{yuan(trade['amount'] * 6 // 1000)},0.00,")
    for refund in ali.refunds.values():  # refund rows: negative amounts, the request number
        if refund["status"] != "REFUND_SUCCESS" or \
                not refund.get("refunded_at", "").startswith(day):
            continue
        trade = ali.trades[refund["out_trade_no"]]
        amount = yuan(refund["amount"])
        lines.append(f"{trade['trade_no']},{trade['out_trade_no']},退款,客运车票,"
                     f"{trade['paid_at']},{refund['refunded_at']},,,,,159****5620,-{amount},"
                     f"-{amount},0.00,0.00,0.00,0.00,0.00,,0.00,0.00,{refund['out_request_no']},"
                     "0.00,0.00,")
    lines += ["#-----------------------------------------业务明细列表结束------------------------------------",
              f"#交易合计：{len(lines) - 5}笔"]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(f"{ali.seller_id}_{day.replace('-', '')}_业务明细.csv",
                         "\r\n".join(lines).encode("gbk"))
        archive.writestr(f"{ali.seller_id}_{day.replace('-', '')}_业务明细(汇总).csv",
                         f"#交易合计：{len(lines) - 7}笔".encode("gbk"))
    return out.getvalue()


class BillHandler(RequestHandler):
    def get(self, token: str) -> None:
        content = self.application.settings["bills"].get(token)
        if content is None:
            self.set_status(404)
            self.finish()
            return
        self.set_header("Content-Type", "application/zip")
        self.finish(content)


class StateHandler(Base):
    def post(self) -> None:
        body = json.loads(self.request.body or b"{}")
        if "refund_outcomes" in body:  # e.g. ["FAIL"]: the next refund is refused
            self.ali.refund_outcomes = [str(o) for o in body["refund_outcomes"]]
        if "age" in body:  # {"age": {"out_trade_no", "days"}}: paid that many days earlier
            trade = self.ali.trades.get(str(body["age"].get("out_trade_no", "")))
            if trade is not None and trade.get("paid_at"):
                back = dt.timedelta(days=int(body["age"].get("days", 1)),
                                    seconds=int(body["age"].get("seconds", 0)))
                stamp = "%Y-%m-%d %H:%M:%S"
                paid = dt.datetime.strptime(trade["paid_at"], stamp)
                trade["paid_at"] = (paid - back).strftime(stamp)
                for refund in self.ali.refunds.values():  # its refunds move with it
                    if refund["out_trade_no"] == trade["out_trade_no"] and \
                            refund.get("refunded_at"):
                        refund["refunded_at"] = (dt.datetime.strptime(
                            refund["refunded_at"], stamp) - back).strftime(stamp)
        self.ali.faults.update({k: int(body[k]) for k in ("drop", "duplicate", "delay_ms")
                                if k in body})
        self.finish({"faults": self.ali.faults})

    def get(self) -> None:
        self.finish({"refunds": list(self.ali.refunds.values()),
                     "delivered": self.ali.delivered})


def alipay_routes() -> list[tuple[str, type[RequestHandler]]]:
    return [(r"/gateway.do", GatewayHandler), (r"/_sandbox/alipay/pay", PayHandler),
            (r"/_sandbox/alipay/state", StateHandler),
            (r"/_sandbox/alipay/bill/([0-9a-f]+)", BillHandler)]

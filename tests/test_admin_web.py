"""The back-office web app (admin/web) in headless Chromium against a real Keyun: each role
signs in and lands on its console with only its menu, Chinese renders with a real font,
times are Beijing time whatever the device's zone, and the page talks to no other host."""

from __future__ import annotations

import datetime as dt
import io
import re
import secrets
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from playwright.async_api import async_playwright

from tests.booking_support import app_member, issued_order, member, native_departure, person
from tests.support import DEMO_PASSWORD, ROOT
from tests.test_gate_page import CHROMIUM, FLAGS

SHOTS = ROOT / "var" / "screenshots"


def test_the_machine_can_draw_chinese() -> None:
    """The set-up installs a CJK font: without one every character is an empty box."""
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
    assert fonts.strip(), "no CJK font: make test installs fonts-noto-cjk"


async def _sign_in(page, base: str, username: str) -> None:
    await page.goto(f"{base}/admin/")
    await page.wait_for_selector("#username")
    await page.fill("#username", username)
    await page.fill("#password", DEMO_PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_selector("[data-test=who]")


@asynccontextmanager
async def _console(base: str, username: str) -> AsyncIterator[Any]:
    """A page of the back office in Chromium, signed in as ``username``; on the way out the
    browser closes and the page must have raised no error."""
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await (await browser.new_context(viewport={"width": 1366, "height": 800})
                      ).new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            await _sign_in(page, base, username)
            yield page
        finally:
            await browser.close()
    assert not errors, errors


@pytest.mark.gen_test(timeout=120)
async def test_roles_sign_in_to_their_own_console(api, keyun, db) -> None:
    base = keyun.base_url
    SHOTS.mkdir(parents=True, exist_ok=True)
    operator = (await api.login("operator"))["token"]
    phone = "139" + f"{secrets.randbelow(10**8):08d}"
    dep = await native_departure(db, 5, 4)
    order = (await api.post("/api/v1/orders", {
        "departure_id": dep["_id"], "channel": "app", "contact_phone": phone,
        "passengers": [person("张三")]}, token=await app_member(api))).body
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        # a device in New York, in English: the console still speaks Beijing time
        context = await browser.new_context(locale="en-US", timezone_id="America/New_York",
                                            viewport={"width": 1366, "height": 768})
        page = await context.new_page()
        errors: list[str] = []
        hosts: set[str] = set()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc))
        try:
            # a wrong password: the API's refusal in Chinese, still on the sign-in page
            await page.goto(f"{base}/admin/")
            await page.fill("#username", "operator")
            await page.fill("#password", "wrong-password")
            await page.click("#sign-in")
            await page.wait_for_selector("text=用户名或密码错误")
            errors.clear()  # the 401 of that attempt is logged by the browser

            await _sign_in(page, base, "operator")
            assert "运营管理" in await page.text_content("[data-test=who]")
            await page.wait_for_selector("text=车站系统在线")
            await page.wait_for_selector("[data-test=latency-chart] canvas")
            # the day at a glance: today's departures on sale of all today's, today's sales
            today = dt.datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
            day = f"/api/v1/admin/departures?date={today}&limit=1"
            on_sale = (await api.get(day + "&status=on_sale", token=operator)).body["total"]
            every = (await api.get(day, token=operator)).body["total"]
            await page.locator("[data-test=on-sale]", has_text=f"{on_sale:,}").filter(
                has_text=f"/ {every:,}").wait_for()
            assert "票款 ¥" in await page.locator("[data-test=today-sales]").text_content()
            menu = await page.locator(".el-menu-item").all_text_contents()
            assert [m.strip() for m in menu] == ["概览", "班次管理", "基础数据", "业务规则",
                                                 "订单查询", "代售点", "分销平台", "车站系统",
                                                 "运营告警", "退款处理", "清分结算", "客流监测",
                                                 "部省交换", "员工账号", "审计日志"]
            await page.screenshot(path=str(SHOTS / "admin-operator-overview.png"))

            # the audit trail: newest first, times in Beijing time (24-hour), not New York's
            await page.click("text=审计日志")
            await page.wait_for_selector("[data-test=audit] .el-table__row")
            newest = (await api.get("/api/v1/admin/audit?limit=1", token=operator)
                      ).body["entries"][0]
            shown = await page.locator("[data-test=audit] .el-table__row").first.text_content()
            at = dt.datetime.fromisoformat(newest["at"]).astimezone(ZoneInfo("Asia/Shanghai"))
            assert f"{at:%Y-%m-%d %H:%M:%S}" in shown
            assert "AM" not in shown and "PM" not in shown
            await page.screenshot(path=str(SHOTS / "admin-operator-audit.png"))

            # the order desk: a caller gives a phone number; the order, its tickets, its story
            await page.click("text=订单查询")
            await page.fill("#desk-value", phone)
            await page.click("#desk-search")
            row = page.locator("[data-test=orders] .el-table__row").first
            await row.wait_for()
            assert order["order_no"] in await row.text_content()
            text = await row.text_content()
            assert phone not in text and f"{phone[:3]}****{phone[-4:]}" in text  # masked
            await row.click()
            await page.wait_for_selector("[data-test=tickets] .el-table__row")
            tickets = await page.locator("[data-test=tickets]").text_content()
            assert "待支付" in await page.locator(".el-drawer").text_content()
            assert order["tickets"][0]["ticket_no"] in tickets
            assert "张三" in tickets and "*" in tickets  # the ID number shown masked
            await page.wait_for_timeout(500)  # the drawer slides in
            await page.screenshot(path=str(SHOTS / "admin-operator-order-desk.png"))
            await page.keyboard.press("Escape")

            # departures of a day, a page at a time: found by its schedule code
            await page.click("text=班次管理")
            picker = page.locator(".el-date-editor input")
            await picker.fill(dep["service_date"])
            async with page.expect_response(
                    lambda r: f"/api/v1/admin/departures?date={dep['service_date']}" in r.url):
                await picker.press("Enter")
            day_total = await db.departures.count_documents(
                {"service_date": dep["service_date"]})
            await page.locator(  # the server's total over all pages, not a page's rows
                "[data-test=pages]", has_text=f"共 {day_total} 条").wait_for()
            async with page.expect_response(lambda r: "q=" in r.url):
                await page.fill(_input("q"), dep["_id"])
                await page.press(_input("q"), "Enter")
            row = page.locator("[data-test=departures] .el-table__row", has_text=dep["_id"])
            await row.wait_for()
            assert await page.locator("[data-test=departures] .el-table__row").count() == 1

            # its seat map, live: a passenger's order holds a seat while the operator watches
            await page.locator("[data-test=live]", has_text="实时更新").wait_for()
            left = (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"]
            await page.click(f"[data-test='seats-{dep['_id']}']")
            seat_map = page.locator("[data-test=seat-map]")
            await seat_map.wait_for()
            held = seat_map.locator("[data-state=held]")
            before = await held.count()
            bought = await api.post("/api/v1/orders", {
                "departure_id": dep["_id"], "channel": "app", "contact_phone": phone,
                "passengers": [person("李四")]}, token=await app_member(api))
            assert bought.status == 201, bought.text
            await page.wait_for_function(
                "n => document.querySelectorAll('[data-test=seat-map] [data-state=held]')"
                ".length > n", arg=before)
            seat = bought.body["tickets"][0]["seat"]
            assert await seat_map.locator("[data-state=held]",
                                          has_text=re.compile(rf"^\s*{seat}\s*$")).count()
            await page.screenshot(path=str(SHOTS / "admin-operator-seat-map.png"))
            await page.keyboard.press("Escape")
            await row.locator("a", has_text=f"{left - 1} /").wait_for()  # the row's count too

            # stop the bus's online sale with a reason, then resume it
            await row.get_by_role("button", name="停售").click()
            await page.fill(".el-message-box input", "车辆检修")
            await page.click(".el-message-box .el-button--primary")
            await row.locator(".el-tag", has_text="停售").wait_for()
            assert (await db.departures.find_one({"_id": dep["_id"]}))["status"] == "stopped"
            await page.screenshot(path=str(SHOTS / "admin-operator-departures.png"))
            await row.get_by_role("button", name="恢复").click()
            await row.locator(".el-tag", has_text="在售").wait_for()
            assert (await db.departures.find_one({"_id": dep["_id"]}))["status"] == "on_sale"
            # an extra bus of the same schedule: confirmed, and it is in the list at once
            await row.get_by_role("button", name="加班").click()
            await page.click(".el-message-box .el-button--primary")
            extra = page.locator("[data-test=departures] .el-table__row",
                                 has_text=dep["_id"] + "-X1")
            await extra.wait_for()
            assert await db.departures.find_one({"_id": dep["_id"] + "-X1",
                                                 "nature": "extra"})
            # 派车: a bus of the carrier big enough, and a second driver
            crew = (await db.departures.find_one({"_id": dep["_id"]})).get("driver_ids", [])
            bus = await db.vehicles.find_one({"carrier_id": dep["carrier_id"], "status": "active",
                                              "seats": {"$gte": dep["seats"]}})
            driver = await db.drivers.find_one({"carrier_id": dep["carrier_id"],
                                                "status": "active", "_id": {"$nin": crew}})
            row = row.first  # (the extra bus's id begins with the same)
            await row.get_by_role("button", name="派车").click()
            dialog = page.locator("[data-test=assign-dialog]")
            await dialog.wait_for()
            await dialog.locator("[data-test=assign-vehicle]").click()
            await page.locator(".el-select-dropdown__item:visible",
                               has_text=bus["plate"]).click()
            await dialog.locator("[data-test=assign-drivers]").click()
            await page.locator(".el-select-dropdown__item:visible",
                               has_text=driver["name"]).first.click()
            await dialog.locator(".el-dialog__title").click()  # the list closes
            await dialog.locator("[data-test=save-assign]").click()
            await row.filter(has_text=bus["plate"]).wait_for()
            assigned = await db.departures.find_one({"_id": dep["_id"]})
            assert assigned["vehicle_id"] == bus["_id"]
            assert assigned["driver_ids"] == [*crew, driver["_id"]]

            await page.click("#sign-out")
            await page.wait_for_selector("#username")

            # finance: refunds, no staff accounts; a typed-in staff page sends it back
            await _sign_in(page, base, "finance")
            menu = await page.locator(".el-menu-item").all_text_contents()
            assert [m.strip() for m in menu] == ["概览", "业务规则", "订单查询", "代售点",
                                                 "分销平台", "运营告警", "退款处理", "清分结算",
                                                 "客流监测"]
            await page.goto(f"{base}/admin/staff")
            await page.wait_for_selector("text=待财务处理的退款")
            assert urlsplit(page.url).path == "/admin/"
            await page.click("text=退款处理")
            await page.wait_for_selector("[data-test=refunds]")
            await page.screenshot(path=str(SHOTS / "admin-finance-refunds.png"))
            await page.click("#sign-out")
            await page.wait_for_selector("#username")

            # an agent lands on its outlet's account: deposit and credit in yuan
            await _sign_in(page, base, "agent")
            account = page.locator("[data-test=account]")
            await account.wait_for()
            text = await account.text_content()
            assert "预存款余额" in text and "¥" in text and "代售点" in text
            assert urlsplit(page.url).path == "/admin/account"
            # and its deposit statement, paged on the server
            await page.locator("[data-test=statement-pages]",
                               has_text=re.compile(r"共 \d+ 条")).wait_for()
            await page.screenshot(path=str(SHOTS / "admin-agent-account.png"))
        finally:
            await browser.close()
    assert not errors, errors
    assert hosts == {urlsplit(base).netloc}, hosts  # nothing from any other host


@pytest.mark.gen_test(timeout=180)
async def test_base_data_pages(api, keyun, db, tmp_path) -> None:
    """An operator adds a carrier, changes it (on the version it read; a change made
    meanwhile by someone else is refused in Chinese), and checks a file of vehicles before
    importing it; station staff see their own station only."""
    base = keyun.base_url
    SHOTS.mkdir(parents=True, exist_ok=True)
    code = "CW" + secrets.token_hex(3).upper()
    plates = [f"粤W{secrets.randbelow(10**5):05d}" for _ in range(3)]
    vehicles = tmp_path / "vehicles.csv"
    vehicles.write_text("车牌号码,客运企业代码,厂牌型号,车辆等级,核定载客数\n" + "".join(
        f"{p},{code},宇通ZK6122H,high_1,{49 if i != 1 else 120}\n"
        for i, p in enumerate(plates)), encoding="utf-8")
    operator = (await api.login("operator"))["token"]
    async with _console(base, "operator") as page:
        await page.click("text=基础数据")
        await page.wait_for_selector("[data-test=records] .el-table__row")
        await page.click("#tab-carriers")
        await page.click("[data-test=add]")
        dialog = page.locator("[data-test=record-dialog]")
        await dialog.locator("[data-test=f-code]").fill(code)
        await dialog.locator("[data-test=f-name]").fill("网页测试客运有限公司")
        await dialog.locator("[data-test=f-division]").fill("440106")
        await dialog.locator("[data-test=f-licence_no]").fill("440100999001")
        await dialog.locator("[data-test=save]").click()
        await page.wait_for_selector("text=已保存")
        stored = await db.carriers.find_one({"_id": code})
        assert stored and stored["version"] == 1 and stored["name"] == "网页测试客运有限公司"

        # found by its code, changed: version 2
        await page.fill("[data-test=q]", code)
        await page.press("[data-test=q]", "Enter")
        row = page.locator("[data-test=records] .el-table__row", has_text=code)
        await row.wait_for()
        await row.locator("[data-test=edit]").click()
        await dialog.locator("[data-test=f-phone]").fill("020-88886666")
        # meanwhile somebody else changes it: this change is refused, in Chinese
        other = await api.patch(f"/api/v1/admin/carriers/{code}", {"address": "别处"},
                                token=operator, headers={"If-Match": '"1"'})
        assert other.status == 200
        await dialog.locator("[data-test=save]").click()
        await page.wait_for_selector("text=该记录已被他人修改")
        assert (await db.carriers.find_one({"_id": code})).get("phone") is None
        await dialog.get_by_role("button", name="取消").click()
        await row.locator("[data-test=edit]").click()
        await dialog.locator("[data-test=f-phone]").fill("020-88886666")
        await dialog.locator("[data-test=save]").click()
        await dialog.wait_for(state="hidden")  # saved (an earlier toast may still show)
        stored = await db.carriers.find_one({"_id": code})
        assert stored["phone"] == "020-88886666" and stored["version"] == 3

        # a file of vehicles: checked first (the bad row named), nothing written
        await page.click("#tab-vehicles")
        await page.click("[data-test=import]")
        await page.set_input_files("[data-test=file]", str(vehicles))
        await page.click("[data-test=dry-run]")
        report = page.locator("[data-test=report]")
        await report.wait_for()
        assert "新增 2" in await report.text_content()
        bad = await page.locator("[data-test=import-errors] .el-table__row").all_text_contents()
        assert len(bad) == 1 and bad[0].startswith("3") and "seats" in bad[0]
        assert await page.locator("[data-test=apply]").is_disabled()
        await page.screenshot(path=str(SHOTS / "admin-operator-import.png"))
        assert await db.vehicles.count_documents({"carrier_id": code}) == 0
        # the fixed file: checked, then imported
        vehicles.write_text(vehicles.read_text().replace(",120", ",49"), encoding="utf-8")
        await page.set_input_files("[data-test=file]", str(vehicles))
        await page.click("[data-test=dry-run]")
        await page.wait_for_selector("[data-test=report] >> text=新增 3")
        await page.click("[data-test=apply]")
        await page.wait_for_selector("text=导入完成")
        assert await db.vehicles.count_documents({"carrier_id": code}) == 3
        await page.keyboard.press("Escape")
        # a long file shows how far the check has got while it runs
        from tests.test_imports import _csv, _drivers

        drivers = tmp_path / "drivers.csv"
        drivers.write_bytes(_csv(_drivers(4000, "WEB" + secrets.token_hex(3).upper())))
        await page.click("#tab-drivers")
        await page.click("[data-test=import]")
        await page.set_input_files("[data-test=file]", str(drivers))
        await page.click("[data-test=dry-run]")
        await page.locator("[data-test=import-progress]").wait_for()
        await page.wait_for_selector("[data-test=report] >> text=新增 4000")
        assert await page.locator("[data-test=import-progress]").count() == 0
        await page.keyboard.press("Escape")
        await page.click("#sign-out")
        await page.wait_for_selector("#username")

        # station staff: their station only, no import
        await _sign_in(page, base, "station_staff")
        await page.click("text=基础数据")
        await page.wait_for_selector("[data-test=records] .el-table__row")
        rows = await page.locator("[data-test=records] .el-table__row").all_text_contents()
        assert len(rows) == 1 and "440111001" in rows[0]
        assert await page.locator("[data-test=import]").count() == 0
        await page.screenshot(path=str(SHOTS / "admin-station-basedata.png"))


@pytest.mark.gen_test(timeout=120)
async def test_rules_page_tries_a_draft_then_publishes_it(api, keyun, db) -> None:
    """An operator drafts a station's rule (fewer passengers per order), sees what it would
    have done to the last 30 days, publishes it; it is in force at once."""
    base = keyun.base_url
    operator = (await api.login("operator"))["token"]
    station = "RW" + secrets.token_hex(3).upper()
    made = await api.post("/api/v1/admin/stations", {
        "code": station, "name": "规则测试站", "grade": 3, "division": "440106", "city": "广州",
        "lng": 113.3, "lat": 23.1}, token=operator)
    assert made.status == 201, made.text
    async with _console(base, "operator") as page:
        await page.click("text=业务规则")
        await page.wait_for_selector("[data-test=current]")
        assert "退票费" in await page.locator("[data-test=current]").text_content()
        await page.click("[data-test=new-version]")
        dialog = page.locator("[data-test=rule-dialog]")
        await dialog.locator(".el-select").first.click()
        await page.locator(".el-select-dropdown__item", has_text="车站").click()
        await dialog.locator("[data-test=scope-ref]").fill(station)
        await dialog.locator(".el-input-number input").first.fill("3")
        await dialog.locator("[data-test=dry-run]").click()
        await page.wait_for_selector("[data-test=dry-run-report]")
        assert "订单" in await page.locator("[data-test=dry-run-report]").text_content()
        await dialog.locator("[data-test=publish]").click()
        await page.wait_for_selector("text=已发布")
        row = page.locator("[data-test=versions] .el-table__row", has_text=station)
        await row.wait_for()
        assert "生效中" in await row.text_content()
        await page.screenshot(path=str(SHOTS / "admin-operator-rules.png"))
    stored = await db.rules.find_one({"scope.ref": station})
    assert stored["rules"] == {"max_passengers": 3}


@pytest.mark.gen_test(timeout=90)
async def test_alerts_page_shows_alerts_as_they_open_and_end(keyun, services) -> None:
    """The operator's alert list follows the alerts:ops topic: no reload needed."""
    key = "test-attention:" + secrets.token_hex(4)
    async with _console(keyun.base_url, "operator") as page:
        await page.click("text=运营告警")
        await page.wait_for_selector("[data-test=live]")
        await services.alerts.raise_alert("refund_attention", key, f"测试告警 {key}")
        row = page.locator("[data-test=alerts] .el-table__row", has_text=key)
        await row.wait_for(timeout=10_000)
        assert "退款异常" in await row.text_content()
        await page.screenshot(path=str(SHOTS / "admin-operator-alerts.png"))
        await services.alerts.ended(key, "test over")
        await row.wait_for(state="detached", timeout=10_000)


@pytest.mark.gen_test(timeout=90)
async def test_partners_page_registers_a_platform_and_rotates_its_key(keyun, db) -> None:
    """The operator registers a selling platform, issues its key (the secret shown once),
    a second one beside it, and revokes the first."""
    code = "PW" + secrets.token_hex(3).upper()
    async with _console(keyun.base_url, "operator") as page:
        await page.click("text=分销平台")
        await page.click("[data-test=add-partner]")
        await page.locator("[data-test=p-code]").fill(code)
        await page.locator("[data-test=p-name]").fill("网页测试旅行网")
        await page.click("[data-test=p-save]")
        row = page.locator("[data-test=partners] .el-table__row", has_text=code)
        await row.wait_for()
        await row.locator("[data-test=keys]").click()
        dialog = page.locator("[data-test=keys-dialog]")
        await dialog.locator("[data-test=issue-key]").click()
        secret = dialog.locator("[data-test=secret]")
        await secret.wait_for()
        first = (await secret.locator("code").first.text_content()) or ""
        assert first.startswith("pk_")
        await dialog.locator("[data-test=issue-key]").click()
        await dialog.locator("[data-test=live-keys] .el-table__row").nth(1).wait_for()
        assert await dialog.locator("[data-test=issue-key]").is_disabled()  # two live
        await page.screenshot(path=str(SHOTS / "admin-operator-partner-keys.png"))
        await dialog.locator("[data-test=live-keys] .el-table__row", has_text=first
                             ).get_by_role("button", name="吊销").click()
        await page.wait_for_selector("text=已吊销")
    partner = await db.partners.find_one({"code": code})
    keys = await db.partner_keys.find({"partner_id": partner["_id"]}).to_list()
    assert sorted(k["status"] for k in keys) == ["active", "revoked"]
    assert next(k for k in keys if k["status"] == "revoked")["_id"] == first


def _input(name: str) -> str:
    """The text box of a field marked ``data-test=name`` (Element Plus puts the mark on the
    box itself or on its wrapper, depending on the widget)."""
    return f"[data-test={name}] input, input[data-test={name}]"


@pytest.mark.gen_test(timeout=150)
async def test_finance_settles_from_its_console(api, keyun, db, services) -> None:
    """Finance sets a carrier's cycle and bank account, drafts a clearing rule and sees its
    simulation, checks the ledger sums to zero, reconciles a quiet day and settles a closed
    day, with its payout instructions and a carrier's statement, and finds a passenger's
    electronic invoice."""
    buyer = await member(api)
    sold_on = await native_departure(db, 4, 2)
    order = await issued_order(api, services, buyer, sold_on["_id"], [person()])
    invoice = await api.post(f"/api/v1/orders/{order['order_no']}/invoice",
                             {"title": "网页测试发票抬头"}, token=buyer)
    assert invoice.status == 201 and invoice.body["status"] == "issued", invoice.text
    await services.ledger.run()
    carrier = await db.carriers.find_one({}, sort=[("_id", 1)])
    entity = f"carrier:{carrier['_id']}"
    day = (dt.date.today() - dt.timedelta(days=90)).isoformat()
    # settlement days only go forward: after any day another test settled
    latest = await db.settlement_batches.find_one({}, sort=[("through_date", -1)])
    through = max(day, (dt.date.fromisoformat(latest["through_date"]) + dt.timedelta(
        days=1)).isoformat()) if latest else day
    # the ticket's sale as if booked long enough before that day for any cycle (T+N, N ≤ 7)
    # to settle it: the bus's carrier then has a statement in the batch
    sold_by = f"carrier:{sold_on['carrier_id']}"
    await db.ledger_entries.update_many(
        {"order_no": order["order_no"], "kind": "sale"},
        {"$set": {"booked_on": (dt.date.fromisoformat(through) - dt.timedelta(
            days=8)).isoformat()}})
    named = await api.get(f"/api/v1/admin/settlement/entities?q={quote(carrier['name'])}",
                          token=(await api.login("finance"))["token"])
    assert 1 <= named.body["total"] < 20 and entity in [e["id"] for e in named.body["entities"]]
    async with _console(keyun.base_url, "finance") as page:
        await page.click("text=清分结算")
        await page.locator(_input("entity-q")).fill(carrier["name"])
        await page.locator(_input("entity-q")).press("Enter")
        await page.locator("[data-test=entity-pages]",
                           has_text=f"共 {named.body['total']} 条").wait_for()
        row = page.locator("[data-test=entities] .el-table__row", has_text=entity)
        await row.wait_for()
        await row.get_by_role("button", name="设置").click()
        dialog = page.locator("[data-test=entity-dialog]")
        await dialog.locator(".el-input-number input").fill("3")
        await dialog.locator("input").nth(1).fill("中国建设银行")
        await dialog.locator("input").nth(2).fill("网页测试客运公司")
        await dialog.locator(_input("account-no")).fill("6217000011112222333")
        await dialog.locator("[data-test=save-entity]").click()
        await page.wait_for_selector("text=已保存")
        await row.filter(has_text="T+3").wait_for()
        assert "2333" in await row.text_content() and "11112222" not in await row.text_content()

        await page.click("#tab-rules")
        await page.click("[data-test=new-clearing-rule]")
        await page.locator(_input("platform-percent")).fill("2.5")
        await page.click("[data-test=save-draft]")
        draft = page.locator("[data-test=clearing-rules] .el-table__row", has_text="平台 2.5%")
        await draft.wait_for()
        await draft.locator("[data-test=simulate]").click()
        await page.wait_for_selector("[data-test=simulation]")
        assert "现行规则" in await page.locator("[data-test=simulation]").text_content()

        await page.click("#tab-ledger")
        total = page.locator("[data-test=ledger-total]")
        await total.filter(has_text="¥0.00").wait_for()

        await page.click("#tab-reconciliations")
        await page.locator(_input("recon-date")).fill(day)
        await page.locator(_input("recon-date")).press("Enter")
        await page.locator(_input("recon-source")).fill("alipay")
        await page.click("[data-test=reconcile]")
        await page.locator("[data-test=runs] .el-table__row", has_text=day).first.wait_for()
        await page.wait_for_selector("[data-test=differences] >> text=无差异")

        await page.click("#tab-settlements")
        await page.locator(_input("through")).fill(through)
        await page.locator(_input("through")).press("Enter")
        await page.click("[data-test=settle]")
        batch = page.locator("[data-test=batches] .el-table__row",
                             has_text="SB" + through.replace("-", ""))
        await batch.wait_for()
        assert "已完成" in await batch.text_content()
        settled = await db.settlement_batches.find_one({"_id": "SB" + through.replace("-", "")})
        await page.locator("[data-test=batch-entity-pages]",  # the batch's rows, paged
                           has_text=f"共 {len(settled['entities'])} 条").wait_for()
        # the carrier's statement of the batch, found by its account, opened as XLSX
        await page.locator(_input("batch-q")).fill(sold_by)
        await page.locator(_input("batch-q")).press("Enter")
        statement_row = page.locator("[data-test=batch-entities] .el-table__row",
                                     has_text=sold_by)
        await statement_row.wait_for()
        async with page.expect_download() as saving:
            await statement_row.locator("[data-test=xlsx]").click()
        saved = await saving.value
        sheet = load_workbook(io.BytesIO((await saved.path()).read_bytes()), read_only=True).active
        cells = [str(c) for r in sheet.iter_rows(values_only=True) for c in r if c is not None]
        ticket_no = order["tickets"][0]["ticket_no"]
        assert f"sale:{ticket_no}" in cells, cells[:40]
        payouts = page.locator("[data-test=payouts]")  # the batch's payout instructions
        await payouts.filter(has_text="付款指令").wait_for()
        assert await payouts.locator("[data-test=payout-file]").count() == 1
        await page.screenshot(path=str(SHOTS / "admin-finance-settlement.png"))

        await page.click("#tab-invoices")
        row = page.locator("[data-test=invoices] .el-table__row",
                           has_text=invoice.body["invoice_no"])
        await row.wait_for()
        assert "网页测试发票抬头" in await row.text_content()
        assert "已开具" in await row.text_content()
        # exported as a job: its progress shows, then the file downloads
        async with page.expect_download() as saving:
            await page.click("[data-test=invoices-xlsx]")
            await page.locator("[data-test=invoices-progress]").wait_for()
        saved = await saving.value
        assert re.fullmatch(r"invoices-\d{8}-\d{6}\.xlsx", saved.suggested_filename)
        sheet = load_workbook(io.BytesIO((await saved.path()).read_bytes()), read_only=True).active
        assert invoice.body["invoice_no"] in [r[0] for r in sheet.iter_rows(values_only=True)]
        await page.locator("[data-test=invoices-progress]").wait_for(state="detached")
    stored = await db.settlement_entities.find_one({"_id": entity})
    assert stored["cycle_days"] == 3 and "6217000011112222333" not in str(stored)
    assert await db.clearing_rules.count_documents({"lines.platform_bp": 250}) >= 1


async def _search(page: Any, origin: str, destination: str, day: str) -> None:
    """The selling console's search, as a seller types it."""
    await page.locator("[data-test=from]").fill(origin)
    await page.locator("[data-test=to]").fill(destination)
    await page.locator(".el-date-editor input").fill(day)
    await page.locator(".el-date-editor input").press("Enter")
    await page.click("[data-test=search]")


@pytest.mark.gen_test(timeout=150)
async def test_an_agent_sells_pays_from_its_deposit_and_refunds(api, keyun, db) -> None:
    """The outlet's console: search, book a real-name passenger, pay from the deposit, the
    ticket issued; refund it after seeing the fee. A phone agent books and has the caller
    texted the payment link."""
    dep = await native_departure(db, 3, 1)
    station = await db.stations.find_one({"_id": dep["station_id"]})
    stops = await db.stops.find({"route_id": dep["route_id"]}).sort("seq", 1).to_list()
    rider = person("钱七")
    async with _console(keyun.base_url, "agent") as page:
        await page.locator(".el-menu-item", has_text="售票").click()
        await _search(page, station["_id"], stops[-1]["name"], dep["service_date"])
        await page.locator("[data-test=found] .el-table__row").first.wait_for()
        await page.locator("[data-test=book]").first.click()
        dialog = page.locator("[data-test=book-dialog]")
        await dialog.locator("[data-test=name-0]").fill(rider["name"])
        await dialog.locator("[data-test=id-0]").fill(rider["id_no"])
        await dialog.locator("[data-test=contact]").fill("13812345678")
        await dialog.locator("[data-test=confirm-book]").click()
        await page.wait_for_selector("text=已下单")
        row = page.locator("[data-test=orders] .el-table__row", has_text="待支付").first
        await row.locator("[data-test=pay]").click()
        await page.wait_for_selector("text=已从预存款支付")
        issued = page.locator("[data-test=orders] .el-table__row", has_text="钱七").first
        await issued.get_by_text("已出票").first.wait_for()
        await page.screenshot(path=str(SHOTS / "admin-agent-sell.png"))
        await issued.locator("[data-test=refund]").click()
        await page.click(".el-message-box .el-button--primary")
        await page.wait_for_selector("text=已退票")
        # looked up again by its number: the one order, its ticket refunded
        sold = await db.orders.find_one({"outlet_id": "OUT440106001"}, sort=[("created_at", -1)])
        await page.locator(_input("order-lookup")).fill(sold["order_no"])
        await page.click("[data-test=find-orders]")
        await page.locator("[data-test=orders] .el-table__row").filter(
            has_text=sold["order_no"]).get_by_text("1号座 已退").wait_for()
        assert await page.locator("[data-test=orders] .el-table__row").count() == 1
    order = await db.orders.find_one({"outlet_id": "OUT440106001"}, sort=[("created_at", -1)])
    tickets = await db.tickets.find({"order_no": order["order_no"]}).to_list()
    assert [t["status"] for t in tickets] == ["refunded"]
    assert tickets[0]["passenger"]["name"] == "钱七"

    caller = "139" + f"{secrets.randbelow(10**8):08d}"
    async with _console(keyun.base_url, "phone_agent") as page:
        await page.wait_for_selector("text=电话订票")
        await _search(page, station["_id"], stops[-1]["name"], dep["service_date"])
        await page.locator("[data-test=book]").first.click()
        dialog = page.locator("[data-test=book-dialog]")
        await dialog.locator("[data-test=contact]").fill(caller)
        await dialog.locator("[data-test=name-0]").fill("孙八")
        await dialog.locator("[data-test=id-0]").fill(person()["id_no"])
        await dialog.locator("[data-test=confirm-book]").click()
        await page.wait_for_selector("text=已下单")
        row = page.locator("[data-test=orders] .el-table__row", has_text="待支付").first
        await row.locator("[data-test=send-link]").click()
        await page.wait_for_selector("text=支付短信已发送")
        phoned = await db.orders.find_one({"channel": "phone"}, sort=[("created_at", -1)])
        # the same caller rings again: the desk finds 孙八 by the number, books by reference
        await page.locator("[data-test=book]").nth(1).click()
        await dialog.locator("[data-test=contact]").fill(caller)
        await dialog.locator("[data-test=find-caller]").click()
        await dialog.locator("[data-test=remembered-孙八]").click()
        assert await dialog.locator("[data-test=id-0]").input_value() != ""  # masked, locked
        assert await dialog.locator("[data-test=id-0]").is_disabled()
        await dialog.locator("[data-test=confirm-book]").click()
        await dialog.wait_for(state="hidden")  # closed once the order is made
    assert await db.notices.find_one({"_id": f"pay_link:{phoned['order_no']}"})
    first = await db.tickets.find_one({"order_no": phoned["order_no"]})
    again = await db.orders.find_one({"channel": "phone"}, sort=[("created_at", -1)])
    assert again["order_no"] != phoned["order_no"]
    second = await db.tickets.find_one({"order_no": again["order_no"]})
    assert second["passenger"]["id_no_index"] == first["passenger"]["id_no_index"]


@pytest.mark.gen_test(timeout=30)
async def test_the_app_is_served_with_its_assets_cached_for_good(api) -> None:
    page = await api.get("/admin/stations")  # any path of the app: its shell
    assert page.status == 200 and "管理后台" in page.text
    assert "Content-Security-Policy" in page.headers
    script = page.text.split('src="', 1)[1].split('"', 1)[0]
    asset = await api.get(script)
    assert asset.status == 200 and "immutable" in asset.headers["Cache-Control"]
    assert (await api.get("/admin/assets/..%2F..%2Fpages.py")).status == 404


@pytest.mark.gen_test(timeout=180)
async def test_the_authority_watches_its_region_and_the_operator_reports_to_the_ministry(
        api, keyun, db) -> None:
    """The 广州 authority sees its own stations' flow (a table and a chart), a forecast with
    its backtest error, the map; the operator sends a day to the ministry and pulls the 运政
    changes."""
    from devstack.history import load_history

    gz = "440111001"
    routes = await db.routes.distinct("_id", {"origin_station_id": gz})
    await load_history(db, 365, route_ids=routes)
    async with _console(keyun.base_url, "authority") as page:
        menu = [m.strip() for m in await page.locator(".el-menu-item").all_text_contents()]
        assert "客流监测" in menu and "部省交换" in menu and "清分结算" not in menu
        await page.click("text=客流监测")
        rows = page.locator("[data-test=stats-rows] .el-table__row")
        await rows.first.wait_for()
        table = await page.locator("[data-test=stats-rows]").text_content()
        assert "广州市汽车客运站" in table and "深圳" not in table
        await page.wait_for_selector("[data-test=flow-chart] canvas")
        await page.screenshot(path=str(SHOTS / "admin-authority-flow.png"))

        await page.click("#tab-routes")
        await page.locator("[data-test=monitored-routes] .el-table__row").first.wait_for()
        await page.click("[data-test=flagged-only]")  # the flagged routes alone, paged
        # (the statistics may still be filling in from the history just loaded: compare the
        # count of flagged routes and the pages' total of one answer)
        for _ in range(100):
            flagged = await page.locator("[data-test=flagged]").text_content()
            pages = await page.locator("[data-test=route-pages]").text_content()
            if f"共 {flagged} 条" in pages:
                break
            await page.wait_for_timeout(100)
        else:
            raise AssertionError(f"{flagged} flagged, pages say {pages}")
        assert await page.locator("[data-test=monitored-routes] .el-table__row").filter(
            has_not=page.locator(".el-tag")).count() == 0

        await page.click("#tab-forecast")
        await page.locator(_input("forecast-ref")).fill(gz)
        await page.click("[data-test=forecast]")
        model = page.locator("[data-test=forecast-model]")
        await model.wait_for()
        assert "MAPE" in await model.text_content()
        await page.wait_for_selector("[data-test=forecast-chart] canvas")
        await page.screenshot(path=str(SHOTS / "admin-authority-forecast.png"))

        await page.click("#tab-map")
        await page.wait_for_selector("[data-test=map] canvas")
        legend = await page.locator("[data-test=map-legend]").text_content()
        assert "客座率" in legend and "满载" in legend and "预警" in legend
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(SHOTS / "admin-authority-map.png"))

    async with _console(keyun.base_url, "operator") as page:
        await page.click("text=部省交换")
        await page.click("[data-test=export]")
        done = page.locator("[data-test=exports] .el-table__row", has_text="已确认")
        await done.first.wait_for()
        await page.click("[data-test=pull]")
        await page.locator("[data-test=pulls] .el-table__row").first.wait_for()
        await page.screenshot(path=str(SHOTS / "admin-operator-ministry.png"))
    assert await db.ministry_exports.count_documents({"status": "acknowledged"}) >= 1


@pytest.mark.gen_test(timeout=120)
async def test_api_docs_are_swagger_ui_and_try_it_out_reaches_this_server(keyun) -> None:
    """A mini-program developer reads /api/docs in Swagger UI and tries an operation out:
    the call goes to this Keyun and its answer shows; nothing comes from another host."""
    base = keyun.base_url
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page(viewport={"width": 1366, "height": 768})
        errors: list[str] = []
        hosts: set[str] = set()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc))
        try:
            await page.goto(f"{base}/api/docs")
            await page.wait_for_selector(".swagger-ui .info .title")
            assert "Keyun" in await page.locator(".swagger-ui .info .title").text_content()
            assert await page.locator(".swagger-ui .errors-wrapper").count() == 0
            staff = page.locator(".opblock-summary-path", has_text="/api/v1/auth/staff")
            await staff.first.wait_for()
            # a deep link opens one operation (Swagger UI draws operations as they scroll in)
            await page.goto("about:blank")
            await page.goto(f"{base}/api/docs#/search/getStationSearch")
            operation = page.locator("#operations-search-getStationSearch")  # GET /stations
            await operation.locator("button.try-out__btn").click()
            await operation.locator("button.execute").click()
            status = operation.locator(
                ".live-responses-table tr.response .response-col_status").first
            await status.wait_for()
            assert (await status.text_content()).strip() == "200"
            await page.screenshot(path=str(SHOTS / "api-docs-swagger-ui.png"))
        finally:
            await browser.close()
    assert errors == [], errors
    assert hosts == {urlsplit(base).netloc}, hosts


@pytest.mark.gen_test(timeout=120)
async def test_a_tablet_held_upright_gets_the_menu_in_a_drawer_and_the_whole_width(
        keyun) -> None:
    """At 768×1024 the side menu gives way to a 菜单 button (reachable with the keyboard);
    the departures page fits the screen's width (wide tables scroll inside themselves)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await (await browser.new_context(viewport={"width": 768, "height": 1024},
                                                has_touch=True)).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            await _sign_in(page, keyun.base_url, "operator")
            assert await page.locator(".el-aside").count() == 0
            button = page.locator("#menu-button")
            await button.focus()
            await page.keyboard.press("Enter")
            drawer = page.locator("[data-test=menu-drawer]")
            await drawer.locator(".el-menu-item", has_text="班次管理").click()
            await page.locator("[data-test=departures] .el-table__row").first.wait_for()
            await page.locator(".el-loading-mask").wait_for(state="detached")
            await page.wait_for_timeout(400)  # the drawer slides away
            assert not await drawer.is_visible()
            wide = await page.evaluate("document.documentElement.scrollWidth")
            assert wide <= 768, f"the page is {wide}px wide on a 768px screen"
            await page.screenshot(path=str(SHOTS / "admin-tablet-departures.png"))
        finally:
            await browser.close()
    assert errors == [], errors


async def _tab_to(page: Any, test: str, back: bool = False) -> None:
    """Press Tab (Shift+Tab) until the element marked ``test`` (or one inside it) has focus."""
    for _ in range(60):
        if await page.evaluate("(t) => !!document.activeElement?.closest(`[data-test=${t}]`)",
                               test):
            return
        await page.keyboard.press("Shift+Tab" if back else "Tab")
    raise AssertionError(f"{test} never took the focus")


@pytest.mark.gen_test(timeout=120)
async def test_a_staff_account_is_made_with_the_keyboard_alone(api, keyun, db) -> None:
    """The operator signs in, opens the new-account form, is told what is wrong as the API
    would say it (a bad username, a short password, a username taken), picks the role and
    its station, and creates the account — never touching the mouse."""
    base = keyun.base_url
    username = f"kb_{secrets.token_hex(3)}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await (await browser.new_context(viewport={"width": 1366, "height": 768})
                      ).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        keys = page.keyboard
        try:
            await page.goto(f"{base}/admin/")
            await page.wait_for_selector("#username:focus")  # the form starts where you type
            await keys.type("operator")
            await keys.press("Tab")
            await keys.type(DEMO_PASSWORD)
            await keys.press("Enter")
            await page.wait_for_selector("[data-test=who]")
            await page.goto(f"{base}/admin/staff")
            await page.locator("[data-test=staff] .el-table__row").first.wait_for()

            await _tab_to(page, "new-staff")
            await keys.press("Enter")
            dialog = page.locator("[data-test=staff-dialog]")
            await dialog.wait_for()
            await page.wait_for_selector("[data-test=staff-username]:focus")
            await keys.type("Bad Name")
            await keys.press("Tab")  # leaving the field checks it, as the API would
            await dialog.get_by_text("3–32 位小写字母、数字或 _ . -，以字母开头").wait_for()
            await keys.press("Shift+Tab")
            await keys.press("Control+A")
            await keys.type("operator")  # taken: only the API knows
            await _tab_to(page, "staff-name")
            await keys.type("键盘测试")
            await keys.press("Tab")
            await keys.type("short")
            await keys.press("Tab")
            await dialog.get_by_text("密码至少 10 位").wait_for()
            await _tab_to(page, "staff-password", back=True)
            await keys.press("Control+A")
            await keys.type("keyboard-pass-123")
            await _tab_to(page, "staff-role")
            await keys.press("ArrowDown")  # opens the list
            hovered = page.locator(".el-select-dropdown__item.is-hovering")
            for _ in range(12):
                if (await hovered.count()) and (await hovered.text_content()).strip() == "检票员":
                    break
                await keys.press("ArrowDown")
            await keys.press("Enter")
            await _tab_to(page, "staff-scope")  # a gate needs its station
            await keys.type("440111001")
            await keys.press("Enter")  # submits the form
            await dialog.get_by_text("该用户名已被使用").wait_for()
            await _tab_to(page, "staff-username", back=True)
            await keys.press("Control+A")
            await keys.type(username)
            await keys.press("Enter")
            await page.wait_for_selector("text=已创建")
            await dialog.wait_for(state="hidden")
            await page.screenshot(path=str(SHOTS / "admin-operator-staff-keyboard.png"))
        finally:
            await browser.close()
    assert not errors, errors
    made = await db.staff.find_one({"username": username})
    assert made["role"] == "gate" and made["station_id"] == "440111001"
    assert made["name"] == "键盘测试" and made["status"] == "active"
    signed_in = await api.login(username, "keyboard-pass-123")
    assert signed_in["staff"]["role"] == "gate"


@pytest.mark.gen_test(timeout=150)
async def test_the_operator_cancels_a_departure_and_sees_its_passengers_looked_after(
        api, keyun, db, services) -> None:
    """A bus with two passengers is cancelled from the departures page: the page shows at
    once who is told and that both may refund or change free until the departure time;
    as one passenger refunds, the view follows without a reload."""
    dep = await native_departure(db, 3, 6)
    alice, bob = await app_member(api), await app_member(api)
    a = await issued_order(api, services, alice, dep["_id"], [person("甲乘客")])
    await issued_order(api, services, bob, dep["_id"], [person("乙乘客")])
    async with _console(keyun.base_url, "operator") as page:
        await page.click("text=班次管理")
        picker = page.locator(".el-date-editor input")
        await picker.fill(dep["service_date"])
        await picker.press("Enter")
        await page.fill(_input("q"), dep["_id"])
        await page.press(_input("q"), "Enter")
        row = page.locator("[data-test=departures] .el-table__row", has_text=dep["_id"]).first
        await row.wait_for()
        await page.locator("[data-test=live]", has_text="实时更新").wait_for()
        await row.get_by_role("button", name="取消").click()
        await page.fill(".el-message-box input", "台风停运")
        await page.click(".el-message-box .el-button--primary")
        dialog = page.locator("[data-test=disruption-dialog]")
        await dialog.wait_for()
        tickets = dialog.locator("[data-test=disruption-tickets]")
        await tickets.filter(has_text="共 2 张").filter(has_text="待旅客处理 2").wait_for()
        assert "台风停运" in await dialog.text_content()
        # the notices go out (the server's notice job); the view says so when reopened
        await row.locator(".el-tag", has_text="已取消").wait_for()
        # a passenger refunds, free: the open view follows
        ticket = a["tickets"][0]["ticket_no"]
        quote = await api.get(f"/api/v1/tickets/{ticket}/refund-quote", token=alice)
        assert quote.body["fee"] == 0, quote.text
        refunded = await api.post(f"/api/v1/tickets/{ticket}/refund",
                                  {"quote": quote.body["quote"]}, token=alice)
        assert refunded.status == 200, refunded.text
        await tickets.filter(has_text="已退款 1").filter(has_text="待旅客处理 1").wait_for()
        await page.screenshot(path=str(SHOTS / "admin-operator-disruption.png"))
    stored = await db.departures.find_one({"_id": dep["_id"]})
    assert stored["status"] == "cancelled" and stored["disruption"]["kind"] == "cancelled"

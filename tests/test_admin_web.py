"""The back-office web app (admin/web) in headless Chromium against a real Keyun: each role
signs in and lands on its console with only its menu, Chinese renders with a real font,
times are Beijing time whatever the device's zone, and the page talks to no other host."""

from __future__ import annotations

import datetime as dt
import secrets
import subprocess
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import async_playwright

from tests.booking_support import app_member, native_departure, person
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
            menu = await page.locator(".el-menu-item").all_text_contents()
            assert [m.strip() for m in menu] == ["概览", "班次管理", "订单查询", "代售点",
                                                 "车站系统", "运营告警", "退款处理", "员工账号",
                                                 "审计日志"]
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

            # departures of a day: stop a bus's online sale with a reason, then resume it
            await page.click("text=班次管理")
            picker = page.locator(".el-date-editor input")
            await picker.fill(dep["service_date"])
            async with page.expect_response(
                    lambda r: f"/api/v1/admin/departures?date={dep['service_date']}" in r.url):
                await picker.press("Enter")
            row = page.locator("[data-test=departures] .el-table__row", has_text=dep["_id"])
            await row.wait_for()
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

            await page.click("#sign-out")
            await page.wait_for_selector("#username")

            # finance: refunds, no staff accounts; a typed-in staff page sends it back
            await _sign_in(page, base, "finance")
            menu = await page.locator(".el-menu-item").all_text_contents()
            assert [m.strip() for m in menu] == ["概览", "订单查询", "代售点", "运营告警",
                                                 "退款处理"]
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
            await page.screenshot(path=str(SHOTS / "admin-agent-account.png"))
        finally:
            await browser.close()
    assert not errors, errors
    assert hosts == {urlsplit(base).netloc}, hosts  # nothing from any other host


@pytest.mark.gen_test(timeout=30)
async def test_the_app_is_served_with_its_assets_cached_for_good(api) -> None:
    page = await api.get("/admin/stations")  # any path of the app: its shell
    assert page.status == 200 and "管理后台" in page.text
    assert "Content-Security-Policy" in page.headers
    script = page.text.split('src="', 1)[1].split('"', 1)[0]
    asset = await api.get(script)
    assert asset.status == 200 and "immutable" in asset.headers["Cache-Control"]
    assert (await api.get("/admin/assets/..%2F..%2Fpages.py")).status == 404

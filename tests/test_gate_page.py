"""The gate page end to end in headless Chromium (Debian's ``chromium``): sign in, pick the
departure, paste codes; then the network goes away and the page judges codes with the signed
offline bundle, and uploads what it scanned when the network is back."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import async_playwright

from tests.booking_support import issued_order, person
from tests.support import DEMO_PASSWORD
from tests.test_gate import boarding, qr

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def outcome(page, expected: str) -> str:
    await page.wait_for_function(
        "(want) => document.getElementById('result').dataset.outcome === want", arg=expected,
        timeout=10000)
    return str(await page.text_content("#result-why"))


@pytest.mark.gen_test(timeout=180)
async def test_gate_page_online_then_offline_then_upload(api, keyun, db, services) -> None:
    # boarding opens within the check-in window: a bus 45 minutes out, whichever service day
    # that falls on (the page works with today's and tomorrow's)
    token, dep_id, order = await boarding(api, db, services, passengers=3)
    codes = [(await qr(api, token, t["ticket_no"]))["code"] for t in order["tickets"]]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        # a device in New York, in English: the page still shows Beijing time, 24-hour
        context = await browser.new_context(locale="en-US", timezone_id="America/New_York")
        # the gate device's clock is ten minutes fast: offline, the page must judge codes by
        # the server's clock (learnt with the bundle), or every code looks "expired"
        await context.clock.install(time=time.time() + 600)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            await page.goto(f"{keyun.base_url}/admin/gate")
            await page.fill("#username", "gate")
            await page.fill("#password", DEMO_PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_selector(f"#departure option[value='{dep_id}']", state="attached")
            await page.select_option("#departure", dep_id)
            await page.wait_for_function(
                "() => document.getElementById('bundle-state').textContent.includes('有效票')")
            state = await page.text_content("#bundle-state")
            assert "本机时钟快" in state and "AM" not in state and "PM" not in state
            shown = re.search(r"下载于 (\d{2}):\d{2}:\d{2}", state)
            beijing_hour = dt.datetime.now(ZoneInfo("Asia/Shanghai")).hour
            assert shown and int(shown.group(1)) in {beijing_hour, (beijing_hour - 1) % 24}

            await page.fill("#code", codes[0])
            await page.press("#code", "Enter")
            why = await outcome(page, "admitted")
            assert "座位" in why and await page.get_attribute("#result", "class") == "ok"
            await page.fill("#code", codes[0])
            await page.press("#code", "Enter")
            why = await outcome(page, "already_used")
            assert await page.get_attribute("#result", "class") == "bad" and "检票" in why
            assert await page.text_content("#result-title") == "已检票"

            # sold after the page fetched its bundle: not listed, but its code is signed
            late = await issued_order(api, services, token, dep_id, [person("晚到")])
            late_code = (await qr(api, token, late["tickets"][0]["ticket_no"]))["code"]

            # the network is gone: the bundle judges
            await context.set_offline(True)
            await page.fill("#code", codes[1])
            await page.press("#code", "Enter")
            why = await outcome(page, "admitted")
            assert "离线" in why
            assert await page.get_attribute("#result", "data-mode") == "offline"
            await page.fill("#code", codes[1])
            await page.press("#code", "Enter")
            await outcome(page, "already_used")
            tampered = codes[2][:-2] + ("A" if codes[2][-2] != "A" else "B") + codes[2][-1]
            await page.fill("#code", tampered)
            await page.press("#code", "Enter")
            await outcome(page, "forged")
            # admitted online after the bundle was made: the page remembers it
            await page.fill("#code", codes[0])
            await page.press("#code", "Enter")
            await outcome(page, "already_used")
            await page.fill("#code", late_code)
            await page.press("#code", "Enter")
            why = await outcome(page, "admitted")
            assert "离线包之后售出" in why
            assert "5 条待上传" in await page.text_content("#queue-state")

            # back online: the page uploads by itself
            await context.set_offline(False)
            await page.wait_for_function(
                "() => document.getElementById('upload-state').dataset.uploaded !== undefined",
                timeout=15000)
            assert "0 条待上传" in await page.text_content("#queue-state")
            ticket = await db.tickets.find_one({"ticket_no": order["tickets"][1]["ticket_no"]})
            assert ticket["status"] == "checked_in"
            offline = await db.gate_scans.find(
                {"ticket_no": order["tickets"][1]["ticket_no"], "source": "offline"}).to_list()
            assert [s["outcome"] for s in offline] == ["admitted", "already_used"]
            untouched = await db.tickets.find_one(
                {"ticket_no": order["tickets"][2]["ticket_no"]})
            assert untouched["status"] == "issued"  # the tampered code admitted nobody
            late_ticket = await db.tickets.find_one(
                {"ticket_no": late["tickets"][0]["ticket_no"]})
            assert late_ticket["status"] == "checked_in"
            assert errors == []
        finally:
            await context.close()
            await browser.close()

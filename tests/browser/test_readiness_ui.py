"""The UI says when no worker is running (answers cannot start), and stops saying it."""

from __future__ import annotations

from typing import Any

from playwright.async_api import expect

from echotune.fake_llm import FakeUpstream
from tests.browser.conftest import open_ui
from tests.support.stack import start_stack


async def test_no_worker_is_shown_until_one_starts(
    browser: Any, redis_server_url: str, fake_llm: str, upstream: FakeUpstream
) -> None:
    stack = await start_stack(redis_server_url, fake_llm, workers=0)
    ui = await open_ui(browser, stack.url, upstream)
    try:
        await ui.login()
        notice = ui.page.locator("#workers-status")
        await expect(notice).to_be_visible()
        await expect(notice).to_contain_text("No worker is running")
        await stack.add_worker()
        await ui.page.reload()  # the UI checks at sign-in and every 10 s
        await expect(notice).to_be_hidden()
        ui.assert_clean_console()
    finally:
        await ui.page.context.close()
        await stack.stop()

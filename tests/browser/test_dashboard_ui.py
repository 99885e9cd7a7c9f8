"""The dashboard in a real browser: analytics unavailable, and analytics over seeded data."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from playwright.async_api import expect
from redis.asyncio import Redis

from deploy.local.processes import PYTHON, ServiceProcess
from echotune.common.keys import Keys
from echotune.fake_llm import FakeUpstream
from echotune.gateway.auth.keys import ApiKeyStore
from tests.browser.conftest import open_ui
from tests.browser.ui import UI
from tests.support.processes import start_gateway
from tests.support.stack import Stack

SECTIONS = ("providers", "patterns", "timeline", "engagement")


async def test_analytics_unavailable_is_said_and_no_figures_are_invented(ui: UI) -> None:
    ui.expect_failures("/api/analytics", "/api/insights")
    await ui.login("/dashboard")
    page = ui.page
    await expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()
    for name in SECTIONS:
        status = page.locator(f"#dash-{name}-status")
        await expect(status).to_have_attribute("data-state", "unavailable")
        await expect(status).to_contain_text("Analytics unavailable (HTTP 503")
        await expect(page.locator(f"#dash-{name}")).to_be_empty()
    await expect(page.locator(".kpi, .provider-card, .heatmap, .bars")).to_have_count(0)

    # Live provider health comes from the gateway itself, not from analytics.
    live = page.locator("#dash-live li")
    await expect(live).to_have_count(5)
    await expect(page.locator('#dash-live li[data-provider="fake-openai"]')).to_contain_text(
        "fake-openai"
    )
    await ui.screenshot("dashboard-unavailable", full_page=True)

    # /#dashboard and the nav link lead there too; the chat link goes back.
    await page.get_by_role("link", name="Chat").click()
    await expect(page.locator("#chat-view")).to_be_visible()
    await expect(page.get_by_role("link", name="Chat")).to_have_attribute("aria-current", "page")
    await page.goto("/#dashboard")
    await expect(page.locator("#dashboard-view")).to_be_visible()


# --- with the analytics service over seeded data --------------------------------------------


def with_database(server_url: str, database: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@pytest.fixture
async def seeded_gateway(
    ui_stack: Stack, mongo_server_url: str, redis: Redis
) -> AsyncIterator[tuple[str, str]]:
    """A database seeded by ``echotune-seed``, the analytics service on it, and a gateway that
    proxies to it; yields the gateway URL and an API key of seeded user ``user001``."""
    url = with_database(mongo_server_url, f"ui_{uuid.uuid4().hex[:10]}")
    seed = ServiceProcess(
        "seed",
        [PYTHON, "-m", "echotune.analytics.seed.cli", "--users", "2", "--plays", "400",
         "--attempts", "1500", "--conversations", "3", "--days", "30", "--mongodb-url", url],
        {},
    )  # fmt: skip
    await seed.start(r"^done in", timeout=120)
    await seed.stop()
    env = {**ui_stack.env, "ECHOTUNE_MONGODB_URL": url, "ECHOTUNE_LOG_LEVEL": "WARNING"}
    analytics = ServiceProcess(
        "analytics",
        [PYTHON, "-m", "uvicorn", "echotune.analytics.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", "0", "--log-level", "info"],
        env,
    )  # fmt: skip
    match = await analytics.start(r"Uvicorn running on (http://[\d.]+:\d+)")
    gateway_env = {
        **ui_stack.env,
        "ECHOTUNE_GATEWAY_ANALYTICS_URL": match.group(1),
        "ECHOTUNE_GATEWAY_ANALYTICS_TIMEOUT_S": "60",  # SecantusDB is slow on a busy machine
    }
    gateway, gateway_url = await start_gateway(gateway_env, name="gateway-analytics")
    _, api_key = await ApiKeyStore(redis, Keys(ui_stack.namespace)).create("user001")
    try:
        yield gateway_url, api_key
    finally:
        await gateway.stop()
        await analytics.stop()


async def test_dashboard_renders_charts_from_seeded_analytics(
    browser: Any, seeded_gateway: tuple[str, str], upstream: FakeUpstream
) -> None:
    url, api_key = seeded_gateway
    ui = await open_ui(browser, url, upstream)
    try:
        await ui.login("/dashboard", api_key=api_key)
        page = ui.page
        await page.get_by_label("Provider window").select_option("7d")
        await page.get_by_label("Listening period").select_option("30d")
        for name in SECTIONS:
            await expect(page.locator(f"#dash-{name}").locator("xpath=..")).to_have_attribute(
                "data-state", "ok", timeout=60_000
            )

        cards = page.locator(".provider-card")
        assert await cards.count() >= 2
        first = cards.first
        await expect(first.locator("svg.spark path.p50")).to_have_attribute("d", re.compile(r"^M"))
        await expect(first.locator("svg.spark path.p95")).to_have_attribute("d", re.compile(r"^M"))
        await expect(first.locator("svg.spark path.rate")).to_have_attribute("d", re.compile(r"^M"))
        await expect(first.locator("table.figures tbody tr").first).to_contain_text(
            re.compile(r"\d+ ms")
        )

        heat = page.locator("table.heatmap")
        await expect(heat.locator("tbody tr")).to_have_count(7)
        await expect(heat.locator("td.cell")).to_have_count(7 * 24)
        levels = await heat.locator("td.cell").evaluate_all(
            "cells => cells.map(c => Number(c.style.getPropertyValue('--level')))"
        )
        assert max(levels) == 1
        assert sum(1 for v in levels if v > 0) > 10

        assert await page.locator("svg.bars rect").count() in (
            30,
            31,
        )  # a bar per day, empty ones too
        await expect(page.locator(".kpi").first).to_contain_text(re.compile(r"Plays\s*\d"))
        await expect(page.locator("ol.share-list").first.locator("li")).not_to_have_count(0)
        await ui.screenshot("dashboard", full_page=True)

        # The seeded conversations of user001, and one of them opened.
        await page.get_by_role("link", name="Chat").click()
        items = page.locator("#conversation-list button.conversation")
        await expect(items).to_have_count(3)
        await items.first.click()
        await expect(items.first).to_have_attribute("aria-current", "true")
        await expect(page.locator("article.msg-user").first).to_be_visible()
        await expect(page.locator("article.msg-assistant").first).to_contain_text(
            "Here are some ideas"
        )
        ui.assert_clean_console()
    finally:
        await ui.page.context.close()

"""Issue 21 in a real browser: the panel's "Why this answer" section (listening features,
prompt summary, confidence with its meaning), the "use listening profile" toggle, axe-clean."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import expect
from pymongo import AsyncMongoClient

from deploy.local.servers import free_port
from echotune.analytics.documents import play_document
from echotune.common.mongo import LISTENING_HISTORY
from echotune.fake_llm import FakeUpstream
from tests.browser.conftest import open_ui
from tests.browser.test_accessibility import assert_no_violations
from tests.browser.ui import UI
from tests.support.stack import Stack, providers_config, start_stack
from tests.support.telemetry import with_database

LOGPROBS = [-0.05, -1.2, -0.3, -2.5, -0.01]
TOKENS = ["Try ", "Kind ", "of ", "Blue ", "tonight."]


@pytest.fixture(scope="module")
async def history_url(mongo_server_url: str) -> AsyncIterator[str]:
    """A database where the dev user (the tests' API key) has listened to Portishead most."""
    url = with_database(mongo_server_url, f"why{uuid.uuid4().hex[:8]}")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    start = datetime(2024, 5, 1, 21, 30, tzinfo=UTC)
    spec = [("Portishead", "Roads", "trip hop")] * 6 + [("Nina Simone", "Sinnerman", "jazz")] * 3
    plays = [
        play_document(
            user_id="dev", played_at=start + timedelta(days=i), track_id=f"t-{track}",
            track_name=track, artist_names=[artist], genres=[genre], ms_played=200_000,
        )
        for i, (artist, track, genre) in enumerate(spec)
    ]  # fmt: skip
    await client.get_default_database()[LISTENING_HISTORY].insert_many(plays)
    yield url
    await client.drop_database(client.get_default_database().name)
    await client.close()


@pytest.fixture(scope="module")
async def why_stack(history_url: str, redis_server_url: str, fake_llm: str) -> AsyncIterator[Stack]:
    providers = providers_config(fake_llm)
    for provider in providers:
        if provider["name"] == "fake-openai":
            provider["logprobs"] = True
    running = await start_stack(
        redis_server_url,
        fake_llm,
        providers=providers,
        ECHOTUNE_MONGODB_URL=history_url,
        ECHOTUNE_WORKER_PROFILE_TIMEOUT_S="5",  # SecantusDB is slow; the bound has its own test
        ECHOTUNE_GATEWAY_ANALYTICS_URL=f"http://127.0.0.1:{free_port()}",
        ECHOTUNE_GATEWAY_ANALYTICS_TIMEOUT_S="2",
    )
    yield running
    await running.stop()


@pytest.fixture
async def why_ui(browser: Any, why_stack: Stack, upstream: FakeUpstream) -> AsyncIterator[UI]:
    """A page on the stack with history, open to axe-core (bypass_csp) and the clipboard."""
    async with httpx.AsyncClient(
        headers={"Authorization": "Bearer " + why_stack.env["ECHOTUNE_DEV_API_KEY"]}
    ) as api:
        switched = await api.post(
            f"{why_stack.url}/api/providers/switch", json={"provider": "fake-openai"}
        )
        switched.raise_for_status()
    ui = await open_ui(
        browser, why_stack.url, upstream, bypass_csp=True, timezone_id="Europe/Paris"
    )
    await ui.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        yield ui
        ui.assert_clean_console()
    finally:
        await ui.page.context.close()


def percent(value: float) -> str:
    return f"{round(value * 100)}%"


async def test_the_panel_explains_the_answer(why_ui: UI) -> None:
    ui = why_ui
    await ui.login()
    assert await ui.page.get_by_label("Use listening profile").is_checked()
    ui.answers.next({"tokens": TOKENS, "logprobs": LOGPROBS})
    answer = await ui.send("Something for tonight")
    assert await ui.wait_final(answer) == "done"
    query = parse_qs(urlsplit(ui.stream_requests[0].url).query)
    assert query["use_profile"] == ["true"]
    assert query["time_zone"] == ["Europe/Paris"]  # the browser's

    panel = await ui.open_panel(answer)
    await expect(panel.get_by_role("heading", name="Why this answer")).to_be_visible()
    await expect(panel.locator("[data-fact=profile] dd")).to_contain_text("used (")
    await expect(panel.locator("[data-fact=feature-top_artists] dd")).to_have_text(
        "Portishead (67%), Nina Simone (33%)"
    )
    await expect(panel.locator("[data-fact=feature-top_genres] dd")).to_have_text(
        "trip hop (67%), jazz (33%)"
    )
    # played at 21:30 UTC in May: 23:30 in Paris (summer time)
    await expect(panel.locator("[data-fact=feature-favourite_hours] dd")).to_have_text("23:00")
    await expect(panel.locator("[data-fact=prompt] dd")).to_contain_text("2 messages")

    probabilities = [math.exp(lp) for lp in LOGPROBS]  # computed here, not by the page
    mean, lowest = sum(probabilities) / len(probabilities), min(probabilities)
    await expect(panel.locator("[data-fact=confidence] dd")).to_have_text(
        f"mean {percent(mean)} · lowest {percent(lowest)} (5 tokens)"
    )
    about = panel.get_by_role("button", name="What confidence means")
    tooltip = panel.get_by_role("tooltip")
    await expect(tooltip).to_be_hidden()
    await about.focus()
    await ui.page.keyboard.press("Shift+Tab")
    await ui.page.keyboard.press("Tab")  # keyboard focus: :focus-visible
    await expect(tooltip).to_be_visible()
    await expect(tooltip).to_contain_text("not whether the answer is right")
    await expect(about).to_have_accessible_description(await tooltip.text_content() or "missing")

    await panel.get_by_text("System prompt sent (excerpt)").click()
    await expect(panel.locator(".prompt-excerpt pre")).to_contain_text(
        "- Top artists: Portishead (67%), Nina Simone (33%)"
    )
    await assert_no_violations(ui, "the panel's Why this answer section")
    await ui.screenshot("chat-why-panel")

    await panel.get_by_role("button", name="Copy debug info").click()
    copied = json.loads(await ui.page.evaluate("navigator.clipboard.readText()"))
    assert copied["use_profile"] is True
    assert copied["grounding"]["profile"]["status"] == "used"
    assert copied["grounding"]["prompt"]["system_excerpt"].startswith("You are EchoTune")
    assert copied["confidence"]["tokens"] == 5
    assert copied["confidence"]["mean"] == pytest.approx(mean, abs=1e-6)


async def test_not_offered_by_anthropic_and_the_profile_toggle(why_ui: UI) -> None:
    ui = why_ui
    await ui.login()
    await (await ui.chip("fake-anthropic")).click()
    await expect(await ui.chip("fake-anthropic")).to_have_attribute("aria-pressed", "true")
    await ui.page.get_by_label("Use listening profile").uncheck()
    ui.answers.next({"tokens": ["Some ", "jazz."]})
    answer = await ui.send("Jazz please")
    assert await ui.wait_final(answer) == "done"
    assert parse_qs(urlsplit(ui.stream_requests[-1].url).query)["use_profile"] == ["false"]

    panel = await ui.open_panel(answer)
    await expect(panel.locator("[data-fact=confidence] dd")).to_have_text(
        "not offered by this provider"
    )
    await expect(panel.locator("[data-fact=profile] dd")).to_have_text("off")
    await expect(panel.locator("[data-fact^=feature-]")).to_have_count(0)
    await assert_no_violations(ui, "the panel without confidence or profile")

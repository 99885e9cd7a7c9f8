"""Accessibility in a real browser: axe-core finds nothing; small screens and zoom; live region."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from echotune.fake_llm import FakeUpstream
from tests.browser.conftest import open_ui
from tests.browser.ui import UI
from tests.support.stack import Stack

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
# Every rule axe runs by default (WCAG 2.0-2.2 A/AA and best practices); none may fail.
AXE_OPTIONS = {"resultTypes": ["violations"]}


async def axe_violations(ui: UI) -> list[dict[str, Any]]:
    if not await ui.page.evaluate("typeof window.axe !== 'undefined'"):
        await ui.page.add_script_tag(path=str(AXE))
    result = await ui.page.evaluate(
        "async (options) => await axe.run(document, options)", AXE_OPTIONS
    )
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result["violations"]
    ]


async def assert_no_violations(ui: UI, where: str) -> None:
    violations = await axe_violations(ui)
    assert not violations, f"axe violations on {where}:\n{json.dumps(violations, indent=1)}"


@pytest.fixture(params=["light", "dark", "dark-more-contrast"])
async def axe_ui(
    request: pytest.FixtureRequest,
    browser: Any,
    ui_stack: Stack,
    upstream: FakeUpstream,
    default_provider: None,
) -> Any:
    """A page that lets axe-core in (bypass_csp: the UI's CSP allows no injected script)."""
    scheme, _, contrast = request.param.partition("-")
    ui = await open_ui(
        browser,
        ui_stack.url,
        upstream,
        bypass_csp=True,
        color_scheme=scheme,
        contrast="more" if contrast else "no-preference",
    )
    ui.scheme = request.param  # type: ignore[attr-defined]
    try:
        yield ui
        ui.assert_clean_console()
    finally:
        await ui.page.context.close()


async def test_axe_finds_nothing_on_the_chat(axe_ui: UI) -> None:
    ui = axe_ui
    await ui.page.goto("/")
    await expect(ui.page.get_by_label("API key")).to_be_visible()
    await assert_no_violations(ui, "the sign-in page")
    await ui.screenshot(f"sign-in-{ui.scheme}")  # type: ignore[attr-defined]

    await ui.login()
    ui.answers.next({"status": 429, "retry_after": "1"}, {"tokens": ["Some ", "jazz."]})
    answer = await ui.send("Jazz for cooking")
    await ui.wait_final(answer)
    await ui.open_panel(answer)
    ui.answers.next({"tokens": [f"w{i} " for i in range(300)], "pace_ms": 40})
    stopped = await ui.send("Something long")
    await expect(stopped.locator(".msg-text")).to_contain_text("w3")
    await ui.page.get_by_role("button", name="Stop").click()
    await ui.wait_final(stopped)
    await ui.page.get_by_role("button", name="Stop").wait_for(state="hidden")
    await assert_no_violations(ui, f"the chat ({ui.scheme})")  # type: ignore[attr-defined]
    await ui.screenshot(f"chat-{ui.scheme}")  # type: ignore[attr-defined]


async def test_axe_finds_nothing_on_the_dashboard(axe_ui: UI) -> None:
    ui = axe_ui
    ui.expect_failures("/api/analytics", "/api/insights")
    await ui.login("/dashboard")
    await expect(ui.page.locator("#dash-engagement-status")).to_have_attribute(
        "data-state", "unavailable"
    )
    await expect(ui.page.locator("#dash-live li").first).to_be_visible()
    await assert_no_violations(ui, f"the dashboard ({ui.scheme})")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "viewport", "scale"),
    [("phone", {"width": 375, "height": 740}, 3), ("zoom-200", {"width": 640, "height": 400}, 2)],
)
async def test_small_screens_and_200_percent_zoom_need_no_sideways_scrolling(
    browser: Any,
    ui_stack: Stack,
    upstream: FakeUpstream,
    default_provider: None,
    name: str,
    viewport: dict[str, int],
    scale: int,
) -> None:
    """A phone, and a 1280×800 window at 200 % zoom (a 640×400 CSS viewport)."""
    ui = await open_ui(
        browser, ui_stack.url, upstream, viewport=viewport, device_scale_factor=scale
    )
    try:
        await ui.login()
        ui.answers.next({"tokens": ["A ", "rather ", "long ", "answer ", "that ", "wraps. "] * 8})
        answer = await ui.send("Suggest a long list of songs for a road trip along the coast")
        await ui.wait_final(answer)
        await ui.open_panel(answer)
        overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        assert await ui.page.evaluate(overflow) <= 0, "the chat scrolls sideways"
        message_box = ui.page.get_by_label("Message", exact=True)
        await message_box.scroll_into_view_if_needed()
        await expect(message_box).to_be_in_viewport()
        await ui.screenshot(f"chat-{name}", full_page=True)

        await ui.page.get_by_role("link", name="Dashboard").click()
        await expect(ui.page.locator("#dash-providers-status")).to_have_attribute(
            "data-state", "unavailable"
        )
        assert await ui.page.evaluate(overflow) <= 0, "the dashboard scrolls sideways"
        ui.expect_failures("/api/analytics", "/api/insights")
        ui.assert_clean_console()
    finally:
        await ui.page.context.close()


async def test_reduced_motion_and_high_contrast_are_honoured(
    browser: Any, ui_stack: Stack, upstream: FakeUpstream, default_provider: None
) -> None:
    ui = await open_ui(
        browser, ui_stack.url, upstream, reduced_motion="reduce", forced_colors="active"
    )
    try:
        await ui.page.emulate_media(reduced_motion="reduce", forced_colors="active")
        await ui.login()
        ui.answers.next({"tokens": ["late"], "ttft_ms": 1500})
        answer = await ui.send("Slow one")
        dot = answer.locator(".typing-dot").first
        await expect(dot).to_be_visible()
        assert await dot.evaluate("d => getComputedStyle(d).animationName") == "none"
        await ui.wait_final(answer)
        # Focus is always visible: an outline on the focused control.
        await ui.page.get_by_label("Message", exact=True).focus()
        await ui.page.keyboard.press("Tab")
        focused_outline = await ui.page.evaluate(
            "getComputedStyle(document.activeElement).outlineStyle"
        )
        assert focused_outline not in ("", "none")
        ui.assert_clean_console()
    finally:
        await ui.page.context.close()

"""Real-browser tests of the web UI: Debian's Chromium driven by Playwright, against a real stack.

Chromium is launched from ``/usr/bin/chromium`` (or ``ECHOTUNE_CHROMIUM``); ``playwright
install`` is never used. Without Chromium the tests fail in CI (``CI=true``) and are skipped
elsewhere, with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from deploy.local.servers import free_port
from echotune.fake_llm import FakeUpstream
from tests.browser.ui import UI, ScriptedAnswers
from tests.support.stack import AUTH, Stack, start_stack

# Playwright waits 5 s by default; a page on a loaded machine (phase 1 of make test) needs more.
expect.set_options(timeout=15_000)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is a ``browser`` test (``e2e`` comes from the root conftest)."""
    for item in items:
        if "browser" in item.path.parts:
            item.add_marker(pytest.mark.browser)


def chromium_path() -> str | None:
    """ECHOTUNE_CHROMIUM when set (and only it), else Debian's /usr/bin/chromium."""
    configured = os.environ.get("ECHOTUNE_CHROMIUM")
    candidates = [configured] if configured else ["/usr/bin/chromium", shutil.which("chromium")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - the dev group installs it
        _unavailable("the playwright package is not installed (uv sync)")
    executable = chromium_path()
    if executable is None:
        _unavailable("Chromium is not installed: apt-get install -y chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="session")
async def ui_stack(redis_server_url: str, fake_llm: str) -> AsyncIterator[Stack]:
    """A gateway and a worker of their own: the UI tests switch providers (saved per user) and
    open a breaker.

    The analytics URL points at a closed port: conversations and the dashboard's analytics
    are unavailable here, as on a stack without the analytics service."""
    running = await start_stack(
        redis_server_url,
        fake_llm,
        ECHOTUNE_RESUME_WINDOW_S="20",
        ECHOTUNE_GATEWAY_ANALYTICS_URL=f"http://127.0.0.1:{free_port()}",
        ECHOTUNE_GATEWAY_ANALYTICS_TIMEOUT_S="2",
        # Breakers open on 5 failures in a row, or when every call of a minute failed: the
        # scripted failures of some tests must not open the breaker of the default provider.
        ECHOTUNE_BREAKER_FAILURE_RATE="1.0",
    )
    yield running
    await running.stop()


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), headers=AUTH) as http:
        yield http


@pytest.fixture
def upstream(api: httpx.AsyncClient, fake_llm: str) -> FakeUpstream:
    return FakeUpstream(api, fake_llm)


@pytest.fixture
async def default_provider(ui_stack: Stack, api: httpx.AsyncClient) -> None:
    """Each test starts with the default provider selected (a switch is saved server-side)."""
    response = await api.post(
        f"{ui_stack.url}/api/providers/switch", json={"provider": "fake-openai"}
    )
    response.raise_for_status()


async def open_ui(
    browser: Any,
    base_url: str,
    upstream: FakeUpstream,
    *,
    artifacts: Path = ARTIFACTS,
    **context_options: Any,
) -> UI:
    options: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}, **context_options}
    context = await browser.new_context(base_url=base_url, **options)
    page = await context.new_page()
    ui = UI(page, base_url, ScriptedAnswers(upstream), artifacts)
    await ui.watch()
    # This stack has no analytics service: the conversation list answers 503 on purpose.
    ui.expect_failures("/api/conversations")
    return ui


@pytest.fixture
async def ui(
    browser: Any, ui_stack: Stack, upstream: FakeUpstream, default_provider: None
) -> AsyncIterator[UI]:
    """A fresh browser context on the UI stack; fails the test on any unexpected console error."""
    opened = await open_ui(browser, ui_stack.url, upstream)
    try:
        yield opened
        opened.assert_clean_console()
    finally:
        await opened.page.context.close()

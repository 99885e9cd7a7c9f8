"""Driving the web UI in a real browser: sign-in, messages, scripted answers, console watch."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.async_api import Locator, Page, Request, Route, expect

from echotune.fake_llm import FakeUpstream
from tests.support.stack import API_KEY

FINAL_STATE = re.compile(r"^(done|stopped|error)$")
STREAM_URL = "**/api/chat/stream?*"


def is_stream_post_url(url: str) -> bool:
    """A start by POST (a message too long for a URL; its request id is its X-Request-Id).
    Not a glob: Playwright's ``**/api/chat/stream`` takes the GETs' URLs too."""
    parts = urlsplit(url)
    return parts.path.endswith("/api/chat/stream") and not parts.query


# Records what a test needs to see from inside the page: CSP violations and, per animation
# frame, the state and text length of the newest answer and the live region's text.
WATCH_SCRIPT = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
window.__frames = [];
window.__recordFrames = () => {
  window.__frames = [];
  const tick = () => {
    const answers = document.querySelectorAll('article.msg-assistant');
    const a = answers[answers.length - 1];
    if (a) {
      window.__frames.push({
        state: a.dataset.state,
        length: a.querySelector('.msg-text').textContent.length,
        typing: !a.querySelector('.typing').hidden,
        announced: document.getElementById('announcer').textContent,
      });
    }
    if (!a || !['done', 'stopped', 'error'].includes(a.dataset.state)) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
};
"""


class ScriptedAnswers:
    """Scripts the fake upstream for each answer the page starts, before the gateway sees it.

    The page makes each request id itself; a Playwright route on the stream URL reads it from
    the URL and scripts the fake upstream for that id first, then lets the request go on
    unchanged. Reconnects and status checks of the same id pass through untouched.
    """

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.queue: deque[list[dict[str, Any]]] = deque()
        self.rids: list[str] = []

    def next(self, *steps: dict[str, Any]) -> None:
        """The fake upstream's steps (one per provider attempt) for the next new answer."""
        self.queue.append(list(steps))

    async def handle(self, route: Route) -> None:
        query = parse_qs(urlsplit(route.request.url).query)
        rid = query.get("request_id", [route.request.headers.get("x-request-id", "")])[0]
        if rid and rid not in self.rids:
            self.rids.append(rid)
            if self.queue:
                await self.upstream.script(rid, *self.queue.popleft())
        await route.continue_()


class UI:
    """One page of the UI in its own browser context."""

    def __init__(self, page: Page, base_url: str, answers: ScriptedAnswers, artifacts: Path):
        self.page, self.base_url, self.answers, self.artifacts = page, base_url, answers, artifacts
        self.console: list[dict[str, str]] = []
        self.page_errors: list[str] = []
        self.stream_requests: list[Request] = []
        # "Failed to load resource" errors expected from these paths (see expect_failures).
        self.expected_failures: set[str] = {"/api/auth/me"}

    async def watch(self) -> None:
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("request", self._on_request)
        await self.page.add_init_script(WATCH_SCRIPT)
        await self.page.route(STREAM_URL, self.answers.handle)
        await self.page.route(is_stream_post_url, self.answers.handle)

    async def stop_scripting(self) -> None:
        """No more routes: while any is set, no request reports its raw headers (Last-Event-ID
        among them)."""
        await self.page.unroute(STREAM_URL)
        await self.page.unroute(is_stream_post_url)

    def _on_console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            url = (message.location or {}).get("url", "")
            self.console.append({"type": message.type, "text": message.text, "url": url})

    def _on_request(self, request: Request) -> None:
        if "/api/chat/stream" in request.url:
            self.stream_requests.append(request)

    def expect_failures(self, *paths: str) -> None:
        """HTTP failures the test provokes on purpose (the browser logs each one)."""
        self.expected_failures.update(paths)

    def _expected(self, entry: dict[str, str]) -> bool:
        if not entry["text"].startswith("Failed to load resource"):
            return False
        path = urlsplit(entry["url"]).path
        return any(path.startswith(prefix) for prefix in self.expected_failures)

    def assert_clean_console(self) -> None:
        unexpected = [e for e in self.console if e["type"] == "error" and not self._expected(e)]
        assert not self.page_errors, f"JavaScript errors: {self.page_errors}"
        assert not unexpected, f"console errors: {unexpected}"

    async def csp_violations(self) -> list[str]:
        violations: list[str] = await self.page.evaluate("window.__csp")
        return violations

    # --- actions ------------------------------------------------------------------------

    async def login(self, path: str = "/", api_key: str = API_KEY) -> None:
        await self.page.goto(path)
        await self.page.get_by_label("API key").fill(api_key)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.locator(".account")).to_be_visible()
        if path in ("/", "/#chat"):
            await expect(self.page.locator(".chip").first).to_be_visible()

    async def send(self, text: str) -> Locator:
        """Type a message, press Enter; the new answer's element."""
        count = await self.answer_elements.count()
        box = self.page.get_by_label("Message", exact=True)
        await box.fill(text)
        await box.press("Enter")
        answer = self.answer_elements.nth(count)
        await expect(answer).to_be_attached()
        return answer

    @property
    def answer_elements(self) -> Locator:
        return self.page.locator("article.msg-assistant")

    async def wait_final(self, answer: Locator, timeout_s: float = 20.0) -> str:
        await expect(answer).to_have_attribute("data-state", FINAL_STATE, timeout=timeout_s * 1000)
        state = await answer.get_attribute("data-state")
        assert state is not None
        return state

    async def text_of(self, answer: Locator) -> str:
        return await answer.locator(".msg-text").text_content() or ""

    async def rid_of(self, answer: Locator) -> str:
        rid = await answer.get_attribute("data-request-id")
        assert rid is not None
        return rid

    async def open_panel(self, answer: Locator) -> Locator:
        toggle = answer.get_by_role("button", name="Details")
        if await toggle.get_attribute("aria-expanded") != "true":
            await toggle.click()
        panel = answer.locator(".panel")
        await expect(panel).to_be_visible()
        return panel

    async def chip(self, provider: str) -> Locator:
        return self.page.locator(f'#provider-chips li[data-provider="{provider}"] button')

    async def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=full_page)
        return path

"""The chat in a real browser, against a real gateway, worker and fake upstream LLM."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.async_api import expect
from redis.asyncio import Redis

from deploy.local.servers import free_port
from echotune.common.keys import Keys
from echotune.fake_llm import FakeUpstream
from echotune.gateway.auth.keys import ApiKeyStore
from tests.browser.conftest import open_ui
from tests.browser.ui import UI
from tests.support.processes import start_gateway
from tests.support.stack import API_KEY, Stack

SLOW = {"tokens": [f"tune{i} " for i in range(400)], "pace_ms": 40}


def words(n: int, stem: str = "song") -> list[str]:
    return [f"{stem}{i} " for i in range(n)]


async def test_answer_streams_in_progressively_then_is_announced_once(ui: UI) -> None:
    await ui.login()
    tokens = words(30)
    ui.answers.next({"tokens": tokens, "pace_ms": 40, "ttft_ms": 400})
    await ui.page.evaluate("window.__recordFrames()")
    answer = await ui.send("Music for a rainy evening")

    assert await ui.wait_final(answer) == "done"
    assert await ui.text_of(answer) == "".join(tokens)
    frames: list[dict[str, Any]] = await ui.page.evaluate("window.__frames")
    streaming = [f for f in frames if f["state"] in ("waiting", "streaming")]
    growing = sorted({f["length"] for f in streaming if f["length"] > 0})
    assert len(growing) >= 5, f"the text should grow over many frames, saw lengths {growing}"
    assert growing[0] < len("".join(tokens)) / 4, "the first frames show only the first words"
    assert any(f["typing"] and f["length"] == 0 for f in streaming), "no typing indicator"
    assert not any(f["typing"] for f in streaming if f["length"] > 0)
    assert all(f["announced"] == "" for f in streaming), "tokens must not be announced"
    await expect(ui.page.locator("#announcer")).to_contain_text("echotune answered: song0 song1")

    rid = await ui.rid_of(answer)
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    (first,) = ui.stream_requests
    query = parse_qs(urlsplit(first.url).query)
    assert query["request_id"] == [rid]
    assert query["message"] == ["Music for a rainy evening"]
    assert query["use_context"] == ["true"]
    assert "conversation_id" not in query  # the server makes one; `start` returns it
    await ui.page.wait_for_timeout(1500)  # longer than the reconnect delay (retry: 1000)
    assert len(ui.stream_requests) == 1, "EventSource must not reconnect after done"
    await ui.screenshot("chat")


async def test_a_message_too_long_for_a_url_starts_by_post_then_streams(ui: UI) -> None:
    """The message rode in the EventSource URL: ~7,500 characters of Japanese URL-encode to
    ~67 KB, past the gateway's 64 KB request line (400 invalid_http; nginx refuses 8 KB)."""
    await ui.login()
    message = "雨の夜に合う静かな曲を教えて。" * 500
    tokens = words(5)
    ui.answers.next({"tokens": tokens})
    answer = await ui.send(message)

    assert await ui.wait_final(answer) == "done"
    assert await ui.text_of(answer) == "".join(tokens)
    started, *attached = ui.stream_requests
    assert started.method == "POST"
    assert json.loads(started.post_data or "{}")["message"] == message
    assert attached, "EventSource never attached"
    for request in attached:  # by request id only: no message in any URL
        assert set(parse_qs(urlsplit(request.url).query)) <= {"request_id", "last_event_id"}


async def test_conversation_id_from_start_is_reused_and_context_toggle_is_sent(ui: UI) -> None:
    await ui.login()
    ui.answers.next({"tokens": words(3)})
    first = await ui.send("Something calm")
    await ui.wait_final(first)
    await ui.page.get_by_label("Use conversation context").uncheck()
    ui.answers.next({"tokens": words(3)})
    second = await ui.send("And something louder")
    await ui.wait_final(second)

    panel = await ui.open_panel(first)
    conversation = await panel.locator("[data-fact=conversation] dd").inner_text()
    requests = [parse_qs(urlsplit(r.url).query) for r in ui.stream_requests]
    assert requests[1]["conversation_id"] == [conversation]
    assert requests[1]["use_context"] == ["false"]
    panel = await ui.open_panel(second)
    await expect(panel.locator("[data-fact=context] dd")).to_contain_text("off")


async def test_stop_closes_the_upstream_connection(ui: UI, upstream: FakeUpstream) -> None:
    await ui.login()
    ui.answers.next(SLOW)
    answer = await ui.send("A very long playlist please")
    await expect(answer).to_have_attribute("data-state", "streaming")
    await expect(answer.locator(".msg-text")).to_contain_text("tune3")
    await ui.page.get_by_role("button", name="Stop").click()

    assert await ui.wait_final(answer) == "stopped"
    await expect(answer.locator(".msg-status")).to_have_text("Stopped")
    await expect(ui.page.get_by_role("button", name="Send")).to_be_visible()
    (record,) = await upstream.requests(await ui.rid_of(answer), wait_s=5)
    assert record["closed_by_client"] is True
    assert record["tokens_sent"] < 400


async def test_keyboard_only_sign_in_send_newline_and_escape(
    ui: UI, upstream: FakeUpstream
) -> None:
    page = ui.page
    await page.goto("/")
    key_box = page.get_by_label("API key")
    await expect(key_box).to_be_focused()
    await page.keyboard.type(API_KEY)
    await page.keyboard.press("Enter")
    message_box = page.get_by_label("Message", exact=True)
    await expect(message_box).to_be_focused()

    ui.answers.next(SLOW)
    await page.keyboard.type("first line")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("second line")
    await page.keyboard.press("Enter")
    await expect(page.locator("article.msg-user .msg-text")).to_have_text("first line\nsecond line")
    answer = ui.answer_elements.last
    await expect(answer.locator(".msg-text")).to_contain_text("tune2")
    await page.keyboard.press("Escape")
    assert await ui.wait_final(answer) == "stopped"
    (record,) = await upstream.requests(await ui.rid_of(answer), wait_s=5)
    assert record["closed_by_client"] is True

    # Tab reaches the answer's Details toggle, and Enter opens the panel.
    toggle = answer.get_by_role("button", name="Details")
    await toggle.focus()
    await page.keyboard.press("Enter")
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await expect(answer.locator(".panel")).to_be_visible()


async def test_switching_provider_answers_from_it_and_persists(ui: UI) -> None:
    await ui.login()
    gemini = await ui.chip("fake-gemini")
    await gemini.click()
    await expect(gemini).to_have_attribute("aria-pressed", "true")
    await expect(await ui.chip("fake-openai")).to_have_attribute("aria-pressed", "false")

    ui.answers.next({"tokens": words(5, "gem")})
    answer = await ui.send("Anything by a band from Iceland")
    assert await ui.wait_final(answer) == "done"
    panel = await ui.open_panel(answer)
    await expect(panel.locator("[data-fact=answered_by] dd")).to_contain_text(
        "fake-gemini · gemini-fake"
    )
    await expect(answer.locator(".msg-via")).to_have_text("fake-gemini · gemini-fake")

    await ui.page.reload()  # the choice is saved server-side
    await expect(await ui.chip("fake-gemini")).to_have_attribute("aria-pressed", "true")


async def test_rate_limited_attempt_shows_a_retry_and_the_panel_lists_both(ui: UI) -> None:
    await ui.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await ui.login()
    ui.answers.next({"status": 429, "retry_after": "1"}, {"tokens": words(8, "after")})
    answer = await ui.send("Retry me")
    assert await ui.wait_final(answer) == "done"
    note = answer.locator(".msg-notes li[data-kind=retry]")
    await expect(note).to_contain_text("fake-openai rate limited")
    await expect(answer.locator(".msg-text")).to_have_text("".join(words(8, "after")))

    panel = await ui.open_panel(answer)
    steps = panel.locator("ol.chain li")
    await expect(steps).to_have_count(2)
    await expect(steps.nth(0)).to_contain_text(
        "fake-openai, attempt 1: rate limited, retried after"
    )
    await expect(steps.nth(1)).to_contain_text("fake-openai · gpt-fake, attempt 2: answered (stop)")
    await expect(panel.get_by_role("heading", name="Attempts (2)")).to_be_visible()
    await expect(panel.locator("[data-fact=tokens] dd")).to_have_text(
        re.compile(r"^\d+ in · 8 out$")
    )
    for fact in ("ttft", "total", "tokens_per_s", "context"):
        await expect(panel.locator(f"[data-fact={fact}] dd")).not_to_have_text("—")
    await panel.get_by_role("button", name="Copy debug info").scroll_into_view_if_needed()
    await ui.screenshot("chat-panel")

    await panel.get_by_role("button", name="Copy debug info").click()
    await expect(ui.page.locator(".toast", has_text="copied")).to_be_visible()
    copied = json.loads(await ui.page.evaluate("navigator.clipboard.readText()"))
    assert copied["request_id"] == await ui.rid_of(answer)
    assert copied["attempts"] == 2
    assert [step["kind"] for step in copied["chain"]] == ["retry", "answer"]
    assert copied["chain"][0]["reason"] == "rate_limited"
    assert copied["timings"]["total_ms"] > 0


async def test_failover_is_noted_and_an_open_breaker_shows_the_chip_unavailable(
    ui: UI,
) -> None:
    await ui.login()
    await (await ui.chip("flaky")).click()
    await expect(await ui.chip("flaky")).to_have_attribute("aria-pressed", "true")
    # Three attempts per provider: two answers make six failures of flaky, and its breaker
    # opens at the fifth (an attempt it then skips leaves a 500 to fake-anthropic, retried).
    failing = [{"status": 500}] * 3
    for n in range(2):
        ui.answers.next(*failing, {"tokens": words(4, f"backup{n}-")})
        answer = await ui.send(f"Failover {n}")
        assert await ui.wait_final(answer) == "done"
        await expect(answer.locator(".msg-notes li[data-kind=failover]")).to_contain_text(
            "switched to fake-anthropic"
        )
        await expect(answer.locator(".msg-via")).to_have_text("fake-anthropic · claude-fake")
        panel = await ui.open_panel(answer)
        await expect(panel.locator("ol.chain li[data-kind=failover]")).to_contain_text(
            "failover to fake-anthropic"
        )

    flaky = await ui.chip("flaky")
    await expect(flaky).to_have_attribute("aria-disabled", "true", timeout=10_000)
    await expect(flaky.locator(".chip-state")).to_contain_text(
        re.compile(r"unavailable, next probe in \d+")
    )
    await (await ui.chip("fake-openai")).click()
    await expect(await ui.chip("fake-openai")).to_have_attribute("aria-pressed", "true")
    await flaky.focus()  # aria-disabled keeps it focusable; the page explains the refusal
    await ui.page.keyboard.press("Enter")
    await expect(ui.page.locator(".toast", has_text="flaky cannot be chosen now")).to_be_visible()
    await expect(flaky).to_have_attribute("aria-pressed", "false")


async def test_failed_answer_is_a_toast_whose_retry_asks_again(ui: UI) -> None:
    await ui.login()
    # Three failed attempts on fake-openai, then three on its fallback: the stream's `error`.
    ui.answers.next(*[{"status": 503}] * 6)
    failed = await ui.send("This one fails")
    assert await ui.wait_final(failed) == "error"
    await expect(failed.locator(".msg-status")).to_contain_text("Failed: no provider could answer")
    toast = ui.page.get_by_role("alert").filter(has_text="The answer failed")
    await expect(toast).to_contain_text("all providers failed")
    panel = await ui.open_panel(failed)
    await expect(panel.locator("ol.chain li[data-kind=error]")).to_contain_text("failed")

    ui.answers.next({"tokens": words(3, "second")})
    await toast.get_by_role("button", name="Retry").click()
    await expect(toast).to_be_hidden()
    retried = ui.answer_elements.nth(1)
    assert await ui.wait_final(retried) == "done"
    assert await ui.text_of(retried) == "".join(words(3, "second"))
    assert await ui.rid_of(retried) != await ui.rid_of(failed)
    assert parse_qs(urlsplit(ui.stream_requests[-1].url).query)["message"] == ["This one fails"]


async def test_sign_out_returns_to_the_sign_in_form(ui: UI) -> None:
    await ui.login()
    await ui.page.get_by_role("button", name="Sign out").click()
    await expect(ui.page.get_by_role("heading", name="Sign in to echotune")).to_be_visible()
    await expect(ui.page.get_by_label("API key")).to_be_focused()
    await expect(ui.page.locator("#chat-view")).to_be_hidden()
    status = await ui.page.evaluate("fetch('/api/auth/me').then(r => r.status)")
    assert status == 401
    await ui.page.reload()
    await expect(ui.page.get_by_label("API key")).to_be_visible()
    await ui.page.get_by_label("API key").fill("et_wrong_key")
    await ui.page.get_by_role("button", name="Sign in").click()
    await expect(ui.page.get_by_role("alert")).to_have_text("This API key is not valid.")
    ui.expect_failures("/api/auth/session")


async def test_conversations_unavailable_is_said_and_new_conversation_resets(ui: UI) -> None:
    await ui.login()
    await expect(ui.page.locator("#conversations-status")).to_have_text(
        "Conversations unavailable right now."
    )
    ui.answers.next({"tokens": words(2)})
    await ui.wait_final(await ui.send("Hello"))
    await ui.page.get_by_role("button", name="New conversation").click()
    await expect(ui.answer_elements).to_have_count(0)
    ui.answers.next({"tokens": words(2)})
    await ui.wait_final(await ui.send("Hello again"))
    second = parse_qs(urlsplit(ui.stream_requests[-1].url).query)
    assert "conversation_id" not in second


async def test_http_429_on_start_is_a_toast_with_retry(
    browser: Any, ui_stack: Stack, upstream: FakeUpstream, redis: Redis
) -> None:
    """A gateway allowing one chat start per minute per user, and a user of its own."""
    _, api_key = await ApiKeyStore(redis, Keys(ui_stack.namespace)).create("ui-rate-limited")
    env = {**ui_stack.env, "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_USER": "1"}
    proc, url = await start_gateway(env, name="gateway-limited")
    ui = await open_ui(browser, url, upstream)
    ui.expect_failures("/api/chat/stream")
    try:
        await ui.login(api_key=api_key)
        ui.answers.next({"tokens": words(2)})
        assert await ui.wait_final(await ui.send("message 0")) == "done"
        ui.answers.next({"tokens": words(2)})
        refused = await ui.send("message 1")  # the window slides: no second start this minute
        assert await ui.wait_final(refused) == "error"
        await expect(refused.locator(".msg-status")).to_contain_text("Not sent")
        toast = ui.page.get_by_role("alert").filter(has_text="Too many requests")
        await expect(toast).to_contain_text(re.compile(r"You can retry in \d+ s"))
        await expect(toast).to_contain_text("HTTP 429, rate_limited")
        retry = toast.get_by_role("button", name="Retry")
        await expect(retry).to_be_disabled()  # until Retry-After has passed
        ui.assert_clean_console()
    finally:
        await ui.page.context.close()
        await proc.stop()


async def test_answer_resumes_after_the_gateway_restarts(
    browser: Any, ui_stack: Stack, upstream: FakeUpstream
) -> None:
    """The browser's EventSource reconnects with Last-Event-ID to the restarted gateway and the
    answer goes on where it stopped: no token lost or repeated, one upstream call."""
    port = free_port()
    proc, url = await start_gateway(ui_stack.env, name="gateway-blip", port=port)
    ui = await open_ui(browser, url, upstream)
    # Whatever the page fetches while the gateway is down fails; /readyz is polled every 10 s.
    ui.expect_failures("/api/chat/stream", "/api/providers", "/api/conversations", "/readyz")
    try:
        await ui.login()
        tokens = words(80, "resume")
        ui.answers.next({"tokens": tokens, "pace_ms": 50})
        answer = await ui.send("Keep playing while I reconnect")
        await expect(answer.locator(".msg-text")).to_contain_text("resume5 ")

        # Reconnects are not intercepted, so their raw headers (Last-Event-ID) are reported.
        await ui.stop_scripting()
        proc.kill()  # a crash: connections drop at once
        await proc.stop()
        await expect(answer.locator(".msg-notes")).to_contain_text("Connection lost; reconnecting")
        await asyncio.sleep(0.5)
        proc, _ = await start_gateway(ui_stack.env, name="gateway-blip", port=port)

        assert await ui.wait_final(answer, timeout_s=30) == "done"
        assert await ui.text_of(answer) == "".join(tokens)
        await expect(answer.locator(".msg-notes")).to_contain_text("Reconnected")
        rid = await ui.rid_of(answer)
        resumed = [r for r in ui.stream_requests if (await r.all_headers()).get("last-event-id")]
        assert resumed, "the reconnect carried no Last-Event-ID"
        assert all(rid in r.url for r in ui.stream_requests)
        records = await upstream.requests(rid)
        assert len(records) == 1, "the answer must not be started twice"
        panel = await ui.open_panel(answer)
        await expect(panel.locator("[data-fact=reconnects] dd")).to_contain_text("1")
        ui.assert_clean_console()
    finally:
        await ui.page.context.close()
        await proc.stop()

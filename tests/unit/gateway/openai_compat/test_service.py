"""Our events turned into OpenAI objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from echotune.common.messages import EVENTS_LOST
from echotune.gateway.chat.relay import Entry
from echotune.gateway.openai_compat.service import Completion, chunk_stream


def entry(n: int, kind: str, **data: object) -> Entry:
    return Entry(f"1-{n}", kind, json.dumps(data))


def restart(n: int, reason: str) -> Entry:
    return entry(
        n, "failover", from_provider="p", to_provider="p", to_model="m", reason=reason,
        discard_partial=True,
    )  # fmt: skip


DONE = entry(
    9, "done", finish_reason="stop", provider="p", model="m", timings={"total_ms": 1},
    usage={"prompt_tokens": 1, "completion_tokens": 2},
)  # fmt: skip


def test_text_discarded_by_a_restart_is_not_repeated() -> None:
    """A reclaimed job starts over with ``discard_partial``: its text was returned twice."""
    completion = Completion(id="chatcmpl-x", model="p/m")
    events = [
        entry(1, "delta", delta="Hel"),
        restart(2, "worker_lost"),
        entry(3, "delta", delta="Hello"),
        entry(4, "delta", delta=" there"),
        DONE,
    ]
    for event in events:
        completion.absorb(event)
    assert completion.whole()["choices"][0]["message"]["content"] == "Hello there"


async def streamed(events: list[Entry]) -> tuple[str, list[dict[str, Any]]]:
    """The content a streaming client receives, and its error objects."""

    async def source() -> AsyncIterator[Entry | None]:
        for event in events:
            yield event

    completion = Completion(id="chatcmpl-x", model="p/m")
    content, errors = "", []
    async for frame in chunk_stream(completion, source(), include_usage=False):
        data = frame.decode().removeprefix("data: ").strip()
        if not data.startswith("{"):
            continue
        payload = json.loads(data)
        if "error" in payload:
            errors.append(payload["error"])
        for choice in payload.get("choices", []):
            content += choice["delta"].get("content") or ""
    return content, errors


async def test_a_replay_after_redis_lost_entries_goes_on_without_repeating_the_text() -> None:
    """The replayed answer repeats what the client has: a worker_lost 503 ended the stream."""
    replay = [entry(4, "delta", delta="Hel"), entry(5, "delta", delta="lo wor")]
    events = [
        entry(1, "delta", delta="Hel"),
        entry(2, "delta", delta="lo"),
        restart(3, EVENTS_LOST),
    ]
    content, errors = await streamed([*events, *replay, entry(6, "delta", delta="ld"), DONE])
    assert (content, errors) == ("Hello world", [])


async def test_a_restart_that_changes_sent_text_still_ends_the_stream() -> None:
    events = [entry(1, "delta", delta="Hello"), restart(2, EVENTS_LOST)]
    content, errors = await streamed([*events, entry(3, "delta", delta="Help"), DONE])
    assert content == "Hello"
    assert [e["code"] for e in errors] == ["worker_lost"]
    content, errors = await streamed([*events[:1], restart(2, "worker_lost"), DONE])
    assert [e["code"] for e in errors] == ["worker_lost"]


async def test_a_restart_whose_answer_ends_short_of_the_sent_text_ends_the_stream() -> None:
    """A fresh answer after a restart (a loss with no trace, the gateway's own ``events_lost``)
    that matched the start of the sent text and then ended: the stream finished ``stop`` while
    its client held text the answer does not have."""
    events = [entry(1, "delta", delta="Hello there"), restart(2, EVENTS_LOST)]
    content, errors = await streamed([*events, entry(3, "delta", delta="Hello"), DONE])
    assert content == "Hello there"
    assert [e["code"] for e in errors] == ["worker_lost"]


async def test_a_restart_cancelled_short_of_the_sent_text_ends_as_cancelled() -> None:
    """A cancel cuts any answer short: the stream still ends as the cancel made it."""
    events = [entry(1, "delta", delta="Hello there"), restart(2, EVENTS_LOST)]
    cancelled = entry(
        9, "done", finish_reason="cancelled", provider="p", model="m", timings={"total_ms": 1},
    )  # fmt: skip
    content, errors = await streamed([*events, entry(3, "delta", delta="Hello"), cancelled])
    assert (content, errors) == ("Hello there", [])

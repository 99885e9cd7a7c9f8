"""Our events turned into OpenAI objects."""

from __future__ import annotations

import json

from echotune.gateway.chat.relay import Entry
from echotune.gateway.openai_compat.service import Completion


def entry(n: int, kind: str, **data: object) -> Entry:
    return Entry(f"1-{n}", kind, json.dumps(data))


def test_text_discarded_by_a_restart_is_not_repeated() -> None:
    """A reclaimed job starts over with ``discard_partial``: its text was returned twice."""
    completion = Completion(id="chatcmpl-x", model="p/m")
    events = [
        entry(1, "delta", delta="Hel"),
        entry(
            2,
            "failover",
            from_provider="p",
            to_provider="p",
            to_model="m",
            reason="worker_lost",
            discard_partial=True,
        ),
        entry(3, "delta", delta="Hello"),
        entry(4, "delta", delta=" there"),
        entry(
            5,
            "done",
            finish_reason="stop",
            provider="p",
            model="m",
            timings={"total_ms": 1},
            usage={"prompt_tokens": 1, "completion_tokens": 2},
        ),
    ]
    for event in events:
        completion.absorb(event)
    assert completion.whole()["choices"][0]["message"]["content"] == "Hello there"

"""Failover with tools through the OpenAI door: between an OpenAI-kind and an Anthropic-kind
provider mid-conversation, and never to a fallback that cannot honour the request.

Its own stack: the failures scripted here must not open the breaker of the shared stack's
providers, and its breakers never open (the tests count attempts)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from echotune.fake_llm import FakeUpstream
from tests.support.stack import API_KEY, PROVIDER_SECRET, TIMEOUTS, openai_provider, start_stack

MODEL = "relay/relay-model"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK: Any = [{"role": "user", "content": "Music for the weather where I go?"}]


@pytest.fixture(scope="module")
async def relay_sdk(redis_server_url: str, fake_llm: str) -> AsyncIterator[AsyncOpenAI]:
    backup = {
        "name": "backup",
        "kind": "anthropic",
        "base_url": fake_llm,
        "api_key": PROVIDER_SECRET,
        "models": ["backup-model"],
        "timeouts": TIMEOUTS,
    }
    stack = await start_stack(
        redis_server_url,
        fake_llm,
        providers=[openai_provider(fake_llm, "relay"), backup],
        ECHOTUNE_DEFAULT_PROVIDER="relay",
        ECHOTUNE_FALLBACKS=json.dumps(["backup"]),
        ECHOTUNE_BREAKER_CONSECUTIVE_FAILURES="1000",
        ECHOTUNE_BREAKER_MIN_CALLS="1000",
        ECHOTUNE_WORKER_RETRY_BASE_S="0.01",
    )
    try:
        async with AsyncOpenAI(
            base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0
        ) as client:
            yield client
    finally:
        await stack.stop()


def new_rid() -> str:
    return f"test-{uuid.uuid4().hex}"


async def test_failover_between_openai_and_anthropic_mid_conversation(
    relay_sdk: AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """Turn 1 on the OpenAI-kind provider, turn 2 fails over to the Anthropic-kind fallback,
    turn 3 back on the OpenAI kind: each gets the whole tool history in its own format."""
    turns = [new_rid(), new_rid(), new_rid()]
    paris = {"name": "get_weather", "arguments": {"city": "Paris"}}
    oslo = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    await upstream.script(turns[0], {"tokens": [], "tool_calls": [paris]})
    await upstream.script(turns[1], *[{"status": 500}] * 3, {"tokens": [], "tool_calls": [oslo]})
    await upstream.script(turns[2], {"tokens": ["Pack ", "an ", "umbrella."]})
    history: list[Any] = [*ASK]
    ids: list[str] = []
    for turn in turns[:2]:
        stream = await relay_sdk.chat.completions.create(
            model=MODEL,
            messages=history,
            tools=[WEATHER],
            stream=True,
            extra_headers={"X-Request-Id": turn},
        )
        pieces = [
            piece
            async for chunk in stream
            if chunk.choices
            for piece in chunk.choices[0].delta.tool_calls or []
        ]
        call_id = pieces[0].id
        assert call_id
        arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
        ids.append(call_id)
        call = {"name": "get_weather", "arguments": arguments}
        history += [
            {
                "role": "assistant",
                "tool_calls": [{"id": call_id, "type": "function", "function": call}],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "rain"},
        ]
    assert ids[0].startswith("call_"), "turn 1 answered by the OpenAI-kind provider"
    assert ids[1].startswith("toolu_"), "turn 2 answered by the Anthropic-kind fallback"
    attempts = await upstream.requests(turns[1], count=4)
    assert [a["path"] for a in attempts] == ["/v1/chat/completions"] * 3 + ["/v1/messages"]
    anthropic_body = attempts[-1]["json"]
    assert anthropic_body["messages"][1]["content"] == [
        {"type": "tool_use", "id": ids[0], "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert anthropic_body["messages"][2]["content"][0]["tool_use_id"] == ids[0]
    final = await relay_sdk.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], extra_headers={"X-Request-Id": turns[2]}
    )
    assert final.choices[0].message.content == "Pack an umbrella."
    (last,) = await upstream.requests(turns[2])
    assert last["path"] == "/v1/chat/completions"
    sent = last["json"]["messages"]
    assert [m["tool_call_id"] for m in sent if m["role"] == "tool"] == ids


async def test_a_fallback_that_cannot_honour_the_request_is_skipped(
    relay_sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str
) -> None:
    """logprobs: the Anthropic-kind fallback cannot give them, so it is not asked."""
    await upstream.script(rid, {"status": 500})
    with pytest.raises(openai.APIStatusError) as failed:
        await relay_sdk.chat.completions.create(
            model=MODEL, messages=ASK, logprobs=True, extra_headers={"X-Request-Id": rid}
        )
    assert failed.value.status_code == 502
    paths = [a["path"] for a in await upstream.requests(rid, count=3)]
    assert paths == ["/v1/chat/completions"] * 3, "never sent to the anthropic fallback"

"""The unmodified official `openai` SDK talks to the gateway's OpenAI-compatible door."""

from __future__ import annotations

import time

import openai
import pytest
from openai import AsyncOpenAI

from echotune.fake_llm import FakeUpstream

TOKENS = ["Blue", " in", " Green"]
ASK = [{"role": "user", "content": "a jazz album?"}]


@pytest.mark.cluster
async def test_streaming(sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str) -> None:
    await upstream.script(rid, {"tokens": TOKENS})
    stream = await sdk.chat.completions.create(
        model="fake-openai/gpt-fake",
        messages=ASK,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Request-Id": rid},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(TOKENS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[0].id == f"chatcmpl-{rid}"
    seen = (await upstream.requests(rid))[0]
    assert seen["json"]["messages"][-1] == {"role": "user", "content": "a jazz album?"}


@pytest.mark.cluster
async def test_non_streaming_with_history(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": TOKENS})
    history = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        *ASK,
    ]
    completion = await sdk.chat.completions.create(
        model="gpt-fake", messages=history, extra_headers={"X-Request-Id": rid}
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "".join(TOKENS)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "fake-openai/gpt-fake"
    sent = (await upstream.requests(rid))[0]["json"]["messages"]
    assert sent == history, "the client's own history and system prompt go upstream as sent"


async def test_rate_limit_is_absorbed_by_our_retry(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"status": 429, "retry_after": "1"}, {"tokens": TOKENS})
    completion = await sdk.chat.completions.create(
        model="fake-openai", messages=ASK, extra_headers={"X-Request-Id": rid}
    )
    assert completion.choices[0].message.content == "".join(TOKENS)
    assert len(await upstream.requests(rid, count=2)) == 2


@pytest.mark.cluster
async def test_failover_is_invisible_to_the_client(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(
        rid, {"status": 500}, {"status": 500}, {"status": 500}, {"tokens": TOKENS}
    )
    stream = await sdk.chat.completions.create(
        model="flaky/flaky-model", messages=ASK, stream=True, extra_headers={"X-Request-Id": rid}
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "".join(TOKENS)
    paths = [r["path"] for r in await upstream.requests(rid, count=4)]
    assert paths[-1] == "/v1/messages", "the anthropic fallback answered"


@pytest.mark.cluster
async def test_closing_the_stream_cancels_upstream(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": [f"t{i} " for i in range(300)], "pace_ms": 30})
    stream = await sdk.chat.completions.create(
        model="fake-openai/gpt-fake", messages=ASK, stream=True, extra_headers={"X-Request-Id": rid}
    )
    received = 0
    async for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 3:
            break
    closed_ns = time.monotonic_ns()
    await stream.close()
    (record,) = await upstream.requests(rid)
    assert record["closed_by_client"] is True
    delay_ms = (record["ended_ns"] - closed_ns) / 1e6
    print(f"openai door: client close -> upstream close {delay_ms:.1f} ms")
    assert delay_ms < 2000  # at once (100 tokens to go); slack for a loaded machine
    assert record["tokens_sent"] < 100


async def test_models_list(sdk: AsyncOpenAI) -> None:
    ids = [m.id async for m in sdk.models.list()]
    assert "fake-openai/gpt-fake" in ids
    assert "demo/echotune-demo-1" in ids
    assert (await sdk.models.retrieve("fake-openai/gpt-fake")).owned_by == "fake-openai"


async def test_errors_arrive_as_the_sdk_expects(sdk: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(model="demo", messages=ASK, temperature=5)
    assert bad.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as long:  # its param was null
        await sdk.chat.completions.create(
            model="demo", messages=[*ASK, {"role": "user", "content": "x" * 16_001}]
        )
    assert long.value.body["code"] == "message_too_long"  # type: ignore[index]
    assert long.value.body["param"] == "messages.1.content"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(model="demo", messages=[])
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.chat.completions.create(model="no-such-model", messages=ASK)
    assert missing.value.code == "model_not_found"

"""The whole pipeline with MongoDB: chats become telemetry documents; conversations give context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from echotune.fake_llm import FakeUpstream
from tests.support.sse import StreamResult, read_stream
from tests.support.stack import Stack, start_stack
from tests.support.telemetry import TelemetryHarness

pytestmark = pytest.mark.e2e
CONTEXT_BOUND = 400


@pytest.fixture(scope="module")
async def harness(redis_server_url: str, mongo_server_url: str) -> AsyncIterator[TelemetryHarness]:
    created = await TelemetryHarness.create(redis_server_url, mongo_server_url)
    yield created
    await created.close()


@pytest.fixture(scope="module")
async def pstack(
    harness: TelemetryHarness, redis_server_url: str, fake_llm: str
) -> AsyncIterator[Stack]:
    running = await start_stack(
        redis_server_url,
        fake_llm,
        ECHOTUNE_NAMESPACE=harness.namespace,
        ECHOTUNE_MONGODB_URL=harness.mongo_url,
        ECHOTUNE_WORKER_CONTEXT_MAX_CHARS=str(CONTEXT_BOUND),
        # The test server is slow on a loaded machine; one slow read would pause the context.
        ECHOTUNE_WORKER_CONTEXT_TIMEOUT_S="5",
    )
    telemetry, _ = await harness.start()
    yield running
    await telemetry.stop()
    await running.stop()


async def ask(
    client: httpx.AsyncClient, stack: Stack, rid: str, message: str, **params: Any
) -> StreamResult:
    return await read_stream(
        client,
        "GET",
        f"{stack.url}/api/chat/stream",
        params={"message": message, "request_id": rid, **params},
    )


async def test_a_retried_chat_becomes_two_attempt_documents(
    pstack: Stack,
    harness: TelemetryHarness,
    client: httpx.AsyncClient,
    upstream: FakeUpstream,
    rid: str,
) -> None:
    collection = harness.db["provider_telemetry"]
    async with await collection.watch([{"$match": {"fullDocument.requestId": rid}}]) as changes:
        await upstream.script(rid, {"status": 429, "retry_after": "1"}, {"tokens": ["a", "b", "c"]})
        result = await ask(client, pstack, rid, "hello", provider="fake-openai")
        assert result.text == "abc"
        for _ in range(2):
            await anext(changes)
    first, second = await collection.find({"requestId": rid}).sort("attempt", 1).to_list()
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["success"] is False
    assert first["errorCode"] == "rate_limited"
    assert first["isRetry"] is False
    assert second["success"] is True
    assert second["errorCode"] is None
    assert second["isRetry"] is True
    assert second["tokensOut"] == 3
    assert second["ttftMs"] is not None
    assert second["ttftMs"] <= second["latencyMs"]
    assert {d["provider"] for d in (first, second)} == {"fake-openai"}
    assert {d["model"] for d in (first, second)} == {"gpt-fake"}
    assert second["userId"] == "dev"


async def test_context_on_and_off(
    pstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": ["Try ", "Kind of Blue."]})
    first = await ask(client, pstack, rid, "Recommend a jazz album")
    conversation = first.events[0].json["conversation_id"]
    assert conversation
    assert first.last.json["context"] == {"turns": 0, "chars": 0}

    with_context = f"{rid}-2"
    await upstream.script(with_context, {"tokens": ["Another: A Love Supreme."]})
    second = await ask(client, pstack, with_context, "Another one?", conversation_id=conversation)
    sent = (await upstream.requests(with_context))[0]["json"]["messages"]
    assert {"role": "user", "content": "Recommend a jazz album"} in sent
    assert {"role": "assistant", "content": "Try Kind of Blue."} in sent
    assert second.last.json["context"]["turns"] == 2

    without = f"{rid}-3"
    await upstream.script(without, {"tokens": ["ok"]})
    third = await ask(
        client, pstack, without, "And a third?", conversation_id=conversation, use_context="false"
    )
    sent = (await upstream.requests(without))[0]["json"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert third.last.json["context"] == {"turns": 0, "chars": 0}


async def test_context_stays_within_its_bound(
    pstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    conversation = f"long-{rid}"
    for n in range(8):
        step = f"{rid}-{n}"
        await upstream.script(step, {"tokens": [f"answer {n} " + "la " * 30]})
        result = await ask(
            client, pstack, step, f"question {n} " + "why " * 20, conversation_id=conversation
        )
        assert result.last.event == "done"
        used = result.last.json["context"]
        sent = (await upstream.requests(step))[0]["json"]["messages"]
        history = sent[1:-1]  # without our system prompt and the new question
        assert used["chars"] <= CONTEXT_BOUND
        assert sum(len(m["content"]) for m in history if m["role"] != "system") <= CONTEXT_BOUND
    assert used["turns"] >= 2, "the newest turns are kept"

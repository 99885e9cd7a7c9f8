"""Retries, backoff, failover, circuit breakers and provider switching, with real processes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from echotune.fake_llm import FakeUpstream
from tests.support.sse import StreamResult, frames, read_stream
from tests.support.stack import Stack, openai_provider, start_stack

NAMES = ["retry", "backoff", "breaker", "probe", "partial", "cont", "cancel", "switch", "backup"]


@pytest.fixture(scope="module")
async def rstack(redis_server_url: str, fake_llm: str) -> AsyncIterator[Stack]:
    running = await start_stack(
        redis_server_url,
        fake_llm,
        gateways=1,
        workers=2,
        providers=[
            *(openai_provider(fake_llm, name) for name in NAMES),
            openai_provider(
                fake_llm,
                "slow",
                # generous enough that a retry's fresh connection makes it on a loaded machine
                # (CI once saw the retried attempt time out as well)
                timeouts={"connect": 1, "first_token": 1.0, "idle": 0.8, "total": 30},
            ),
        ],
        ECHOTUNE_DEFAULT_PROVIDER="backup",
        ECHOTUNE_FALLBACKS=json.dumps(["backup"]),
        ECHOTUNE_BREAKER_CONSECUTIVE_FAILURES="3",
        # Long enough that a loaded machine checks an open breaker before it half-opens.
        ECHOTUNE_BREAKER_COOLDOWN_S="5",
        ECHOTUNE_WORKER_RETRY_BASE_S="0.1",
        ECHOTUNE_WORKER_RETRY_CAP_S="0.4",
    )
    yield running
    await running.stop()


async def chat(
    client: httpx.AsyncClient, stack: Stack, rid: str, provider: str, **body: Any
) -> StreamResult:
    return await read_stream(
        client,
        "POST",
        f"{stack.url}/api/chat/stream",
        json={"message": "play something", "provider": provider, **body},
        headers={"X-Request-Id": rid},
    )


def new_rid() -> str:
    return f"rel-{uuid.uuid4().hex}"


async def test_retry_after_is_honoured(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"status": 429, "retry_after": "1"}, {"tokens": ["ok"]})
    result = await chat(client, rstack, rid, "retry")
    (retry,) = result.of("retry")
    assert retry.json["reason"] == "rate_limited"
    assert retry.json["delay_ms"] >= 1000
    assert result.text == "ok"
    assert result.last.json["attempts"] == 2
    first, second = await upstream.requests(rid, count=2)
    waited_s = (second["started_ns"] - first["ended_ns"]) / 1e9
    print(f"429 Retry-After: 1 -> retried after {waited_s:.3f} s")
    assert waited_s >= 1.0


async def test_backoff_is_bounded_then_fails_over_in_order(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(
        rid, {"status": 503}, {"status": 503}, {"status": 503}, {"tokens": ["saved"]}
    )
    result = await chat(client, rstack, rid, "backoff")
    kinds = [e.event for e in result.events]
    assert kinds == ["start", "retry", "retry", "failover", "delta", "done"]
    delays = [e.json["delay_ms"] for e in result.of("retry")]
    assert [e.json["attempt"] for e in result.of("retry")] == [1, 2]
    assert delays[0] <= 100
    assert delays[1] <= 200  # full jitter: at most base * 2^(attempt-1)
    failover = result.of("failover")[0].json
    assert (failover["from_provider"], failover["to_provider"]) == ("backoff", "backup")
    assert failover["reason"] == "http_503"
    assert result.last.json["provider"] == "backup"
    assert result.text == "saved"
    models = [r["json"]["model"] for r in await upstream.requests(rid, count=4)]
    assert models == ["backoff-model"] * 3 + ["backup-model"]


async def open_breaker(
    client: httpx.AsyncClient, stack: Stack, upstream: FakeUpstream, provider: str
) -> None:
    rid = new_rid()
    await upstream.script(rid, {"status": 500}, {"status": 500}, {"status": 500}, {"tokens": ["x"]})
    await chat(client, stack, rid, provider)


async def provider_health(client: httpx.AsyncClient, stack: Stack, name: str) -> dict[str, Any]:
    report = (await client.get(f"{stack.url}/api/providers/health")).json()
    return next(p for p in report["providers"] if p["id"] == name) | {"overall": report["status"]}


async def test_breaker_opens_and_is_visible(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await open_breaker(client, rstack, upstream, "breaker")
    health = await provider_health(client, rstack, "breaker")
    assert health["breaker"]["state"] == "open"
    assert health["status"] == "unhealthy"
    assert health["overall"] == "degraded"
    assert health["breaker"]["next_probe_at"] > time.time()
    assert health["live"]["requests"] >= 3
    # An open breaker is skipped at once, without calling the provider.
    await upstream.script(rid, {"tokens": ["from backup"]})
    result = await chat(client, rstack, rid, "breaker")
    assert result.of("failover")[0].json["reason"] == "breaker_open"
    assert [r["json"]["model"] for r in await upstream.requests(rid)] == ["backup-model"]
    # And it cannot be chosen.
    refused = await client.post(f"{rstack.url}/api/providers/switch", json={"provider": "breaker"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "provider_unavailable"


async def test_half_open_lets_one_probe_through_across_workers(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    await open_breaker(client, rstack, upstream, "probe")
    health = await provider_health(client, rstack, "probe")
    await asyncio.sleep(max(health["breaker"]["next_probe_at"] - time.time(), 0) + 0.05)
    rids = [new_rid() for _ in range(8)]
    for rid in rids:
        # The probe holds the half-open breaker for 3 s, so every job meets it in flight.
        await upstream.script(rid, {"tokens": ["slow probe"], "ttft_ms": 3000})
    results = await asyncio.gather(*(chat(client, rstack, rid, "probe") for rid in rids))
    models = [r["json"]["model"] for rid in rids for r in await upstream.requests(rid)]
    workers = [w for w in rstack.workers if any(f"[rid={rid}]" in w.output() for rid in rids)]
    print(f"half-open: {models.count('probe-model')} probe(s) across {len(workers)} workers")
    assert len(workers) == 2, "both workers took part"
    assert models.count("probe-model") == 1
    reasons = [r.of("failover")[0].json["reason"] for r in results if r.of("failover")]
    assert set(reasons) == {"probe_in_flight"}
    assert len(reasons) == 7
    assert (await provider_health(client, rstack, "probe"))["breaker"]["state"] == "closed"


async def test_mid_stream_failure_ends_with_a_partial_error(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": ["one ", "two ", "three "], "disconnect_after": 2})
    result = await chat(client, rstack, rid, "partial")
    assert result.text == "one two "
    assert result.last.event == "error"
    assert result.last.json["code"] == "partial_answer"
    assert result.last.json["partial"] is True
    assert len(await upstream.requests(rid)) == 1, "no retry after the first token"


async def test_mid_stream_failure_continues_on_the_next_provider_when_asked(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(
        rid, {"tokens": ["one ", "two ", "three "], "disconnect_after": 2}, {"tokens": ["three."]}
    )
    result = await chat(client, rstack, rid, "cont", options={"continue_on_failure": True})
    failover = result.of("failover")[0].json
    assert failover["continues_partial"] is True
    assert failover["discard_partial"] is False
    assert result.text == "one two three."
    assert result.last.json["finish_reason"] == "stop"
    _, second = await upstream.requests(rid, count=2)
    sent = second["json"]["messages"]
    assert sent[-2] == {"role": "assistant", "content": "one two "}
    assert "Continue" in sent[-1]["content"]


async def test_cancel_during_a_backoff_wait(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"status": 429, "retry_after": "20"}, {"tokens": ["late"]})
    events = []
    url = f"{rstack.url}/api/chat/stream"
    async with client.stream(
        "GET", url, params={"message": "x", "request_id": rid, "provider": "cancel"}
    ) as response:
        async for frame in frames(response):
            if frame.event:
                events.append(frame)
            if frame.event == "retry":
                cancelled_at = time.monotonic()
                await client.post(f"{rstack.url}/api/chat/{rid}/cancel")
    assert events[-1].event == "done"
    assert events[-1].json["finish_reason"] == "cancelled"
    assert time.monotonic() - cancelled_at < 1.0
    assert len(await upstream.requests(rid)) == 1


async def test_switch_validates_and_persists_across_gateway_restarts(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    url = f"{rstack.url}/api/providers/switch"
    unknown = await client.post(url, json={"provider": "nope"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (422, "unknown_provider")
    bad_model = await client.post(url, json={"provider": "switch", "model": "gpt-99"})
    assert (bad_model.status_code, bad_model.json()["error"]["code"]) == (422, "unknown_model")
    chosen = await client.post(url, json={"provider": "switch"})
    assert chosen.json() == {"provider": "switch", "model": "switch-model"}
    old, _ = rstack.gateways.pop()
    await old.stop()
    await rstack.add_gateway()
    listing = (await client.get(f"{rstack.url}/api/providers")).json()
    assert listing["selection"] == {"provider": "switch", "model": "switch-model"}
    assert [p["id"] for p in listing["providers"] if p["selected"]] == ["switch"]
    await upstream.script(rid, {"tokens": ["chosen"]})
    result = await read_stream(
        client, "GET", f"{rstack.url}/api/chat/stream", params={"message": "hi", "request_id": rid}
    )
    assert result.events[0].json["provider"] == "switch"
    assert result.text == "chosen"
    await client.post(f"{rstack.url}/api/providers/switch", json={"provider": "backup"})


async def test_first_token_timeout_is_retried(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": ["never"], "ttft_ms": 5000}, {"tokens": ["quick"]})
    result = await chat(client, rstack, rid, "slow")
    (retry,) = result.of("retry")
    assert retry.json["reason"] == "timeout"
    assert result.text == "quick"
    first, _ = await upstream.requests(rid, count=2)
    assert first["closed_by_client"] is True
    assert (first["ended_ns"] - first["started_ns"]) / 1e9 < 2.5


async def test_idle_gap_timeout_ends_a_started_answer(
    rstack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": ["a ", "b ", "c "], "hang_after": 2})
    result = await chat(client, rstack, rid, "slow")
    assert result.text == "a b "
    assert result.last.json["code"] == "partial_answer"
    assert "timeout" in result.last.json["message"]

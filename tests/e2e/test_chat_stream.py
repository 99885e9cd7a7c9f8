"""Streaming chat through real gateway and worker processes and a real fake upstream."""

from __future__ import annotations

import time

import httpx
import pytest
from redis.asyncio import Redis

from echotune.fake_llm import FakeUpstream
from tests.support.sse import StreamResult, frames, read_stream
from tests.support.stack import Stack
from tests.support.streams import wait_for_final

TOKENS = ["Hello", ",", " rainy", " evening", " jazz", "!"]


def stream_url(stack: Stack, gateway: int = 0) -> str:
    return f"{stack.gateways[gateway][1]}/api/chat/stream"


def assert_well_formed(result: StreamResult, rid: str) -> None:
    events = result.events
    assert events[0].event == "start"
    assert events[0].json["request_id"] == rid
    assert events[-1].event in ("done", "error")
    assert [e for e in events if e.event in ("done", "error")] == [events[-1]]
    ids = [tuple(map(int, e.id.split("-"))) for e in events if e.id]
    assert len(ids) == len(events), "every event carries its stream id"
    assert ids == sorted(set(ids)), "ids strictly increase"


@pytest.mark.cluster
@pytest.mark.parametrize("provider", ["fake-openai", "fake-anthropic", "fake-gemini"])
async def test_answer_streams_token_by_token(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str, provider: str
) -> None:
    await upstream.script(rid, {"tokens": TOKENS, "pace_ms": 5})
    result = await read_stream(
        client,
        "GET",
        stream_url(stack),
        params={"message": "jazz?", "provider": provider},
        headers={"X-Request-Id": rid},
    )
    assert result.status == 200
    assert result.headers["x-request-id"] == rid
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["cache-control"] == "no-cache"
    assert_well_formed(result, rid)
    deltas = [f.json["delta"] for f in result.of("delta")]
    assert "".join(deltas) == "".join(TOKENS)
    assert len(deltas) > 1, "streamed in pieces (a busy worker merges what accumulated)"
    done = result.last.json
    assert result.last.event == "done"
    assert done["finish_reason"] == "stop"
    assert done["provider"] == provider
    seen = await upstream.requests(rid)
    assert len(seen) == 1
    assert seen[0]["headers"]["x-request-id"] == rid


@pytest.mark.cluster
async def test_post_with_json_body(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": TOKENS})
    result = await read_stream(
        client,
        "POST",
        stream_url(stack),
        json={"message": "hi", "provider": "fake-openai"},
        headers={"X-Request-Id": rid},
    )
    assert result.text == "".join(TOKENS)
    assert result.events[0].retry is not None


async def test_heartbeat_comes_before_the_first_token(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": ["late"], "ttft_ms": 1200})
    result = await read_stream(
        client, "GET", stream_url(stack), params={"message": "hi", "request_id": rid}
    )
    first_delta = next(i for i, f in enumerate(result.frames) if f.event == "delta")
    heartbeats = [f for f in result.frames[:first_delta] if f.comment is not None]
    assert result.frames[0].event == "start"
    assert len(heartbeats) >= 2  # heartbeat every 0.3 s, first token after 1.2 s


async def cancel(client: httpx.AsyncClient, stack: Stack, rid: str) -> tuple[int, httpx.Response]:
    stamp = time.monotonic_ns()
    response = await client.post(f"{stack.url}/api/chat/{rid}/cancel")
    return stamp, response


@pytest.mark.cluster
async def test_cancel_closes_the_upstream_connection_at_once(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(rid, {"tokens": [f"t{i} " for i in range(200)], "pace_ms": 50})
    collected = []
    async with client.stream(
        "GET", stream_url(stack), params={"message": "hi", "request_id": rid}
    ) as resp:
        async for frame in frames(resp):
            collected.append(frame)
            if (
                frame.event == "delta"
                and len(result_deltas := [f for f in collected if f.event == "delta"]) == 3
            ):
                assert len(result_deltas) == 3
                cancelled_at, answer = await cancel(client, stack, rid)
                assert answer.status_code == 202
                assert answer.json()["status"] == "cancelling"
    done = [f for f in collected if f.event == "done"]
    assert done
    assert done[0].json["finish_reason"] == "cancelled"
    assert collected[-1].event == "done"
    (record,) = await upstream.requests(rid)
    assert record["closed_by_client"] is True
    delay_ms = (record["ended_ns"] - cancelled_at) / 1e6
    print(f"cancel -> upstream close: {delay_ms:.1f} ms")
    assert 0 < delay_ms < 2000  # at once (the answer had 10 s to go); slack for a loaded machine


@pytest.mark.cluster
async def test_cancel_before_the_first_token(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str, redis: Redis
) -> None:
    await upstream.script(rid, {"tokens": ["never"], "ttft_ms": 10_000})
    async with client.stream(
        "GET", stream_url(stack), params={"message": "hi", "request_id": rid}
    ) as resp:
        collected = []
        async for frame in frames(resp):
            collected.append(frame)
            if frame.event == "start":
                await upstream_connected(upstream, rid)
                cancelled_at, answer = await cancel(client, stack, rid)
                assert answer.status_code == 202
    assert [f.event for f in collected if f.event] == ["start", "done"]
    assert collected[-1].json["finish_reason"] == "cancelled"
    (record,) = await upstream.requests(rid)
    assert record["closed_by_client"] is True
    assert record["tokens_sent"] == 0
    assert (record["ended_ns"] - cancelled_at) / 1e6 < 2000  # the first token was 10 s away
    # A cancel after the end changes nothing.
    _, again = await cancel(client, stack, rid)
    assert again.status_code == 200
    assert again.json()["status"] == "finished"


async def upstream_connected(upstream: FakeUpstream, rid: str) -> None:
    """The worker has opened its upstream request."""
    assert await upstream.requests(rid, until="started")


@pytest.mark.cluster
async def test_resume_on_another_gateway_loses_and_repeats_nothing(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    tokens = [f"w{i} " for i in range(40)]
    await upstream.script(rid, {"tokens": tokens, "pace_ms": 15})
    params = {"message": "resume me", "request_id": rid}
    first = await read_stream(client, "GET", stream_url(stack, 0), params=params, stop_after=8)
    last_id = first.events[-1].id
    second = await read_stream(
        client, "GET", stream_url(stack, 1), params=params, headers={"Last-Event-ID": last_id}
    )
    assert second.status == 200
    assert second.events[0].id > last_id or second.events[0].id != last_id
    combined = first.events + second.events
    ids = [e.id for e in combined]
    assert len(ids) == len(set(ids)), "no event repeated"
    assert "".join(f.json["delta"] for f in combined if f.event == "delta") == "".join(tokens)
    assert combined[-1].event == "done"
    # Resuming after the final event: nothing more, and the browser must stop reconnecting.
    after = await client.get(
        stream_url(stack, 1), params={"request_id": rid, "last_event_id": combined[-1].id}
    )
    assert after.status_code == 204
    # A reconnect from an earlier id (query form) replays exactly what followed it.
    replay = await read_stream(
        client, "GET", stream_url(stack, 0), params={"request_id": rid, "last_event_id": last_id}
    )
    assert [e.id for e in replay.events] == [e.id for e in second.events]
    assert len(await upstream.requests(rid)) == 1, "a reconnect starts no new job"


@pytest.mark.cluster
async def test_request_id_reused_for_another_message_is_refused(
    stack: Stack, client: httpx.AsyncClient, rid: str
) -> None:
    first = await read_stream(
        client,
        "GET",
        stream_url(stack),
        params={"message": "one", "request_id": rid, "provider": "demo"},
    )
    assert first.status == 200
    clash = await client.get(stream_url(stack), params={"message": "two", "request_id": rid})
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "request_id_conflict"


@pytest.mark.cluster
async def test_disconnect_is_not_a_cancel_but_an_abandoned_stream_stops(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str, redis: Redis
) -> None:
    await upstream.script(rid, {"tokens": [f"t{i} " for i in range(400)], "pace_ms": 25})
    left = await read_stream(
        client, "GET", stream_url(stack), params={"message": "bye", "request_id": rid}, stop_after=3
    )
    left_at = time.monotonic_ns()
    final = await wait_for_final(redis, stack.namespace, rid, timeout=15)
    assert final["type"] == "done"
    assert final["finish_reason"] == "cancelled"
    (record,) = await upstream.requests(rid)
    assert record["closed_by_client"] is True
    waited_s = (record["ended_ns"] - left_at) / 1e9
    # The resume window is 3 s, checked every second (slack both ways for a loaded machine).
    assert 2.0 <= waited_s < 8.0, waited_s
    assert record["tokens_sent"] > 3 + 40, "it kept streaming for a returning reader"
    assert left.events[0].event == "start"


async def test_probes_and_docs(stack: Stack, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{stack.url}/healthz")).json() == {"status": "ok"}
    assert (await client.get(f"{stack.url}/readyz")).json() == {"status": "ready", "workers": 2}
    spec = (await client.get(f"{stack.url}/openapi.json")).json()
    content = spec["paths"]["/api/chat/stream"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in content
    assert set(content["text/event-stream"]["x-event-schemas"]) == {
        "start",
        "delta",
        "retry",
        "failover",
        "done",
        "error",
    }
    assert (await client.get(f"{stack.url}/docs")).status_code == 200

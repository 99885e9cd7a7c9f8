"""An answer starts once and ends once, whatever the order in which processes and requests come.

Each test reproduces one defect of the per-request protocol found by reading the code.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from deploy.local.servers import RedisServer
from echotune.common.keys import Keys
from echotune.fake_llm import FakeUpstream
from tests.support.sse import frames, read_stream
from tests.support.stack import Stack, start_stack


def stream_url(stack: Stack, gateway: int = 0) -> str:
    return f"{stack.gateways[gateway][1]}/api/chat/stream"


async def test_a_chat_started_before_any_worker_exists_is_answered_once_one_starts(
    redis_server_url: str, fake_llm: str, client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """The jobs group used to be created at ``$`` by the first worker: earlier jobs were lost."""
    # The gateway waits for the worker's cold start (slow on a loaded machine) before it checks.
    stack = await start_stack(
        redis_server_url, fake_llm, workers=0, ECHOTUNE_GATEWAY_PICKUP_TIMEOUT_S="60"
    )
    try:
        rid = f"early-{uuid.uuid4().hex}"
        await upstream.script(rid, {"tokens": ["worth ", "the ", "wait"]})
        params = {"message": "anyone there?", "request_id": rid}
        async with client.stream("GET", stream_url(stack), params=params) as response:
            got = frames(response)
            first = await anext(got)
            assert first.event == "start"  # the job is queued, and no worker exists yet
            await stack.add_worker()
            rest = [f async for f in got if f.event]
        assert "".join(f.json["delta"] for f in rest if f.event == "delta") == "worth the wait"
        assert rest[-1].event == "done"
    finally:
        await stack.stop()


async def test_jobs_held_under_a_backlog_are_never_run_twice(
    redis_server_url: str, fake_llm: str, client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """A job read while the worker waited for a slot was not refreshed, so it was reclaimed
    by the other worker while its own worker ran it."""
    stack = await start_stack(
        redis_server_url,
        fake_llm,
        workers=2,
        ECHOTUNE_WORKER_CONCURRENCY="1",
        # Refreshed every 1 s; the last job of each worker waits 7 s for its slot. (A 1 s idle
        # let a worker stalled for 0.7 s by a loaded machine lose a job it was running.)
        ECHOTUNE_WORKER_RECLAIM_IDLE_S="3",
    )
    try:
        rids = [f"backlog-{n}-{uuid.uuid4().hex}" for n in range(6)]
        tokens = [f"t{i} " for i in range(12)]
        for rid in rids:
            await upstream.script(rid, {"tokens": tokens, "pace_ms": 300})
        results = await asyncio.gather(
            *(
                read_stream(
                    client, "GET", stream_url(stack), params={"message": "m", "request_id": r}
                )
                for r in rids
            )
        )
        for rid, result in zip(rids, results, strict=True):
            assert not result.of("failover"), f"{rid} was restarted although nobody died"
            assert result.text == "".join(tokens)
            assert len(await upstream.requests(rid)) == 1, f"{rid} reached the upstream twice"
    finally:
        await stack.stop()


@pytest.mark.cluster
async def test_a_cancel_whose_announcement_was_lost_still_stops_the_answer(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, redis: Redis, rid: str
) -> None:
    """The flag was read once before the answer began; a lost Pub/Sub message was never seen."""
    await upstream.script(rid, {"tokens": [f"t{i} " for i in range(400)], "pace_ms": 25})
    params = {"message": "long one", "request_id": rid}
    async with client.stream("GET", stream_url(stack), params=params) as response:
        events: list[str] = []
        flagged_at = 0.0
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            if events.count("delta") == 2 and not flagged_at:
                # What POST /cancel stores, without its Pub/Sub announcement (as if lost).
                await redis.set(Keys(stack.namespace).cancel_flag(rid), "1", ex=60)
                flagged_at = time.monotonic()
            if line.startswith("data: ") and events[-1] == "done":
                assert '"finish_reason":"cancelled"' in line
                break
        took = time.monotonic() - flagged_at
    assert events[-1] == "done"
    print(f"cancel without its announcement took effect after {took * 1000:.0f} ms")
    assert took < 5.0, "a lost announcement delays a cancel by about a second, not 10 s"


@pytest.mark.cluster
async def test_identical_starts_racing_all_get_the_one_answer(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    """Claim and start were separate calls: a twin arriving in between got 404."""
    await upstream.script(rid, {"tokens": ["only ", "once"], "ttft_ms": 200})
    params = {"message": "twins", "request_id": rid}
    results = await asyncio.gather(
        *(read_stream(client, "GET", stream_url(stack, n % 2), params=params) for n in range(12))
    )
    assert [r.status for r in results] == [200] * 12
    assert {r.text for r in results} == {"only once"}
    assert len(await upstream.requests(rid)) == 1


async def test_another_users_request_id_is_unknown_not_taken(
    redis_server_url: str, fake_llm: str, redis: Redis, rid: str
) -> None:
    """Reusing someone else's request id answered 409, telling that the id exists."""
    from echotune.gateway.auth.keys import ApiKeyStore

    stack = await start_stack(redis_server_url, fake_llm)
    try:
        store = ApiKeyStore(redis, Keys(stack.namespace))
        (_, alice), (_, bob) = await store.create("alice", "t"), await store.create("bob", "t")
        async with httpx.AsyncClient(base_url=stack.url) as http:
            own = await read_stream(
                http,
                "GET",
                "/api/chat/stream",
                headers={"Authorization": f"Bearer {alice}"},
                params={"message": "mine", "request_id": rid, "provider": "demo"},
            )
            assert own.status == 200
            reuse = await http.get(
                "/api/chat/stream",
                headers={"Authorization": f"Bearer {bob}"},
                params={"message": "other", "request_id": rid},
            )
            assert reuse.status_code == 404
            assert reuse.json()["error"]["code"] == "unknown_request"
    finally:
        await stack.stop()


async def test_redis_losing_its_data_does_not_stop_the_answers(
    volatile_redis: RedisServer, fake_llm: str, client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """Workers stopped consuming for good once the jobs group vanished.

    API keys live in Redis and are lost with it, so this stack runs without authentication.
    """
    stack = await start_stack(
        volatile_redis.url, fake_llm, workers=2, ECHOTUNE_GATEWAY_AUTH_ENABLED="false"
    )
    try:
        before = await read_stream(
            client, "GET", stream_url(stack), params={"message": "hi", "provider": "demo"}
        )
        assert before.last.event == "done"
        volatile_redis.stop()
        volatile_redis.start()  # empty: no keys, no consumer group
        for n in range(3):
            rid = f"after-loss-{n}-{uuid.uuid4().hex}"
            await upstream.script(rid, {"tokens": ["back ", "again"]})
            params = {"message": "still there?", "request_id": rid}
            result = await asyncio.wait_for(
                read_stream(client, "GET", stream_url(stack), params=params), 20
            )
            assert result.text == "back again", (result.status, result.events)
    finally:
        await stack.stop()


async def test_with_no_worker_alive_a_chat_ends_with_no_worker_instead_of_hanging(
    redis_server_url: str, fake_llm: str, client: httpx.AsyncClient
) -> None:
    """Without any worker a chat got heartbeats for ten minutes."""
    stack = await start_stack(
        redis_server_url, fake_llm, workers=0, ECHOTUNE_GATEWAY_PICKUP_TIMEOUT_S="1"
    )
    try:
        ready = await client.get(f"{stack.url}/readyz")
        assert ready.json() == {"status": "no_workers", "workers": 0}
        began = time.monotonic()
        result = await read_stream(
            client, "GET", stream_url(stack), params={"message": "hello?", "provider": "demo"}
        )
        assert [e.event for e in result.events] == ["start", "error"]
        assert result.last.json["code"] == "no_worker"
        assert result.last.json["retryable"] is True
        assert time.monotonic() - began < 10
    finally:
        await stack.stop()

"""Faults injected into real processes on 127.0.0.1: a gateway dies, Redis restarts, a flood."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local.processes import start_telemetry
from deploy.local.servers import RedisServer, SecantusServer
from echotune.common.mongo import create_mongo
from echotune.fake_llm import FakeUpstream
from tests.support.sse import Frame, frames, read_stream
from tests.support.stack import AUTH, start_stack


async def read_until_broken(
    client: httpx.AsyncClient, url: str, params: dict[str, str], deltas: int, fault
) -> list[Frame]:  # type: ignore[no-untyped-def]
    """Read events; after ``deltas`` deltas inject ``fault``; return what came before the break."""
    got: list[Frame] = []
    try:
        async with client.stream("GET", url, params=params) as response:
            async for frame in frames(response):
                if frame.event:
                    got.append(frame)
                if frame.event == "delta" and sum(f.event == "delta" for f in got) == deltas:
                    await fault()
    except (httpx.RemoteProtocolError, httpx.ReadError):
        pass
    return got


async def test_gateway_killed_mid_stream_the_client_resumes_elsewhere(
    redis_server_url: str,
    fake_llm: str,
    client: httpx.AsyncClient,
    upstream: FakeUpstream,
    rid: str,
) -> None:
    stack = await start_stack(redis_server_url, fake_llm, gateways=2, workers=1)
    try:
        tokens = [f"w{i} " for i in range(60)]
        await upstream.script(rid, {"tokens": tokens, "pace_ms": 20})
        params = {"message": "hi", "request_id": rid}

        async def kill_first_gateway() -> None:
            stack.gateways[0][0].kill()

        before = await read_until_broken(
            client, f"{stack.gateways[0][1]}/api/chat/stream", params, 5, kill_first_gateway
        )
        assert before[-1].event != "done", "the gateway died mid-answer"
        after = await read_stream(
            client,
            "GET",
            f"{stack.gateways[1][1]}/api/chat/stream",
            params=params,
            headers={"Last-Event-ID": before[-1].id or ""},
        )
        events = before + after.events
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids)), "nothing repeated"
        assert "".join(e.json["delta"] for e in events if e.event == "delta") == "".join(tokens)
        assert events[-1].event == "done"
    finally:
        await stack.stop()


@pytest.fixture
def restartable_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir, appendonly=True)
        server.start()
        yield server
        server.stop()


async def test_redis_restart_during_traffic(
    restartable_redis: RedisServer,
    fake_llm: str,
    client: httpx.AsyncClient,
    upstream: FakeUpstream,
) -> None:
    stack = await start_stack(
        restartable_redis.url, fake_llm, workers=1, ECHOTUNE_WORKER_RECLAIM_IDLE_S="3"
    )
    try:
        rids = [f"chaos-{uuid.uuid4().hex}" for _ in range(4)]
        for rid in rids:
            await upstream.script(rid, {"tokens": [f"t{i} " for i in range(60)], "pace_ms": 50})
        url = f"{stack.url}/api/chat/stream"
        streams = [
            asyncio.create_task(
                read_stream(client, "GET", url, params={"message": "hi", "request_id": rid})
            )
            for rid in rids
        ]
        for rid in rids:
            await upstream.requests(rid, until="started")
        restartable_redis.kill()
        restarted_at = time.monotonic()
        restartable_redis.start()
        async with asyncio.timeout(40):
            results = await asyncio.gather(*streams)
        ended_after = time.monotonic() - restarted_at
        outcomes = [
            r.last.event + ":" + (r.last.json.get("finish_reason") or r.last.json.get("code", ""))
            for r in results
        ]
        print(f"Redis killed and restarted: streams ended {outcomes} within {ended_after:.1f} s")
        assert all(r.last.event in ("done", "error") for r in results), "no stream hangs"
        fresh = f"after-{uuid.uuid4().hex}"
        await upstream.script(fresh, {"tokens": ["back"]})
        again = await read_stream(client, "GET", url, params={"message": "hi", "request_id": fresh})
        assert again.text == "back", (again.status, again.events[-1:])
    finally:
        await stack.stop()


@pytest.mark.serial  # 1000 starts at once load the machine (and must land within the minute)
async def test_a_flood_of_chat_starts_is_limited_and_others_are_served(
    redis_server_url: str,
    fake_llm: str,
    upstream: FakeUpstream,
) -> None:
    from redis.asyncio import Redis

    from echotune.common.keys import Keys
    from echotune.gateway.auth.keys import ApiKeyStore

    stack = await start_stack(
        redis_server_url,
        fake_llm,
        ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_USER="30",
        ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_IP="100000",
    )
    redis = Redis.from_url(redis_server_url, decode_responses=True)
    try:
        _, calm_key = await ApiKeyStore(redis, Keys(stack.namespace)).create("calm", "test")
        url = f"{stack.url}/api/chat/stream"
        limits = httpx.Limits(max_connections=200)
        async with (
            httpx.AsyncClient(headers=AUTH, limits=limits, timeout=60) as flooder,
            httpx.AsyncClient(headers={"Authorization": f"Bearer {calm_key}"}) as calm,
        ):
            gate = asyncio.Semaphore(100)

            async def start(n: int) -> int:
                async with gate:
                    result = await read_stream(
                        flooder,
                        "GET",
                        url,
                        stop_after=1,
                        params={"message": f"flood {n}", "provider": "demo"},
                    )
                    return result.status

            flood = asyncio.gather(*(start(n) for n in range(1000)))
            rid = f"calm-{uuid.uuid4().hex}"
            await upstream.script(rid, {"tokens": ["still ", "here"]})
            began = time.monotonic()
            served = await read_stream(
                calm, "GET", url, params={"message": "hi", "request_id": rid}
            )
            calm_s = time.monotonic() - began
            statuses = await flood
        print(
            f"flood: {statuses.count(200)} accepted, {statuses.count(429)} refused; "
            f"another user's answer took {calm_s * 1000:.0f} ms"
        )
        assert statuses.count(200) == 30
        assert statuses.count(429) == 970
        assert served.text == "still here"
        assert calm_s < 5
    finally:
        await redis.aclose()
        await stack.stop()


async def test_mongodb_outage_chat_goes_on_and_telemetry_catches_up(
    tmp_path: Path,
    redis_server_url: str,
    fake_llm: str,
    client: httpx.AsyncClient,
    upstream: FakeUpstream,
) -> None:
    mongo = SecantusServer(str(tmp_path / "mongo"))
    mongo_url = f"{mongo.start()}/chaos"
    stack = await start_stack(redis_server_url, fake_llm, ECHOTUNE_MONGODB_URL=mongo_url)
    env = {
        **stack.env,
        "ECHOTUNE_TELEMETRY_MONGO_TIMEOUT_MS": "500",
        "ECHOTUNE_TELEMETRY_RETRY_CAP_S": "0.5",
    }
    telemetry, _ = await start_telemetry(env)
    try:
        mongo.stop()
        rids = [f"outage-{uuid.uuid4().hex}" for _ in range(5)]
        url = f"{stack.url}/api/chat/stream"
        began = time.monotonic()
        for n, rid in enumerate(rids):
            await upstream.script(rid, {"tokens": ["still ", "answering"]})
            params = {"message": "hi", "request_id": rid}
            if n:  # an existing conversation: the worker tries (and fails) to read its context
                params["conversation_id"] = "outage-conversation"
            result = await read_stream(client, "GET", url, params=params)
            assert result.text == "still answering"
        took = time.monotonic() - began
        mongo.start()
        client_db = create_mongo(mongo_url)
        db = client_db.get_default_database()
        async with asyncio.timeout(30):
            query = {"requestId": {"$in": rids}}
            while await db["provider_telemetry"].count_documents(query) < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # the writer pushes no signal to wait on
        written = await db["provider_telemetry"].count_documents({"requestId": {"$in": rids}})
        await client_db.close()
        print(
            f"MongoDB down: 5 chats answered in {took:.2f} s; telemetry {written}/5 after restart"
        )
        assert written == 5
        assert took < 5
    finally:
        await telemetry.stop()
        await stack.stop()
        mongo.stop()

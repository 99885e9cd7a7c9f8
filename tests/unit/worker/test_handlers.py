"""The worker's FastStream handlers in-process: FastStream's test broker, a real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from faststream.redis import TestRedisBroker
from redis.asyncio import Redis

from echotune.common.messages import ChatJob, ChatMessage, Role, StartEvent
from echotune.common.request_stream import RequestStreams
from echotune.worker.app import create_app
from echotune.worker.resources import Worker, open_worker
from echotune.worker.settings import WorkerSettings
from tests.support.streams import wait_for_final

DEMO = {"name": "demo", "kind": "demo", "models": ["demo-1"], "token_pace_ms": 1}


@pytest.fixture
def settings(redis_server_url: str) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_server_url,
        mongodb_url="mongodb://127.0.0.1:1/none",  # no context: the answer goes on without it
        namespace=f"t{uuid.uuid4().hex[:10]}",
        providers=[DEMO],
        default_provider="demo",
        context_timeout_s=0.05,
    )


@pytest.fixture
async def worker(settings: WorkerSettings) -> AsyncIterator[tuple[Worker, TestRedisBroker]]:
    broker = create_app(settings).broker
    async with open_worker(settings, broker) as opened, TestRedisBroker(broker) as test_broker:
        broker.context.set_global("worker", opened)
        yield opened, test_broker


async def opened(worker: Worker, user: str = "u1") -> str:
    """A request as the gateway opens it: claimed, with its start event."""
    rid = f"r-{uuid.uuid4().hex}"
    gateway = RequestStreams(
        worker.redis, worker.settings.keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=60_000
    )
    start = StartEvent(request_id=rid, provider="demo", model="demo-1")
    await gateway.open(rid, "fingerprint", user, start)
    return rid


async def test_a_job_is_answered_and_ends_once(
    worker: tuple[Worker, TestRedisBroker], redis: Redis
) -> None:
    running, broker = worker
    rid = await opened(running)
    job = ChatJob(
        request_id=rid,
        user_id="u1",
        messages=[ChatMessage(role=Role.USER, content="hello there")],
        provider="demo",
        model="demo-1",
        deadline_at=time.time() + 30,
    )
    await broker.publish(job, stream=running.settings.keys.jobs)
    final = await wait_for_final(redis, running.settings.namespace, rid)
    assert final["type"] == "done"
    assert final["finish_reason"] == "stop"
    entries = await redis.xrange(running.settings.keys.events(rid))
    assert [f["type"] for _, f in entries].count("done") == 1


async def test_an_unreadable_job_ends_its_stream_with_invalid_job(
    worker: tuple[Worker, TestRedisBroker], redis: Redis
) -> None:
    running, broker = worker
    rid = await opened(running)
    await broker.publish(
        {"request_id": rid, "messages": "not a list"}, stream=running.settings.keys.jobs
    )
    final = await wait_for_final(redis, running.settings.namespace, rid)
    assert final["type"] == "error"
    assert final["code"] == "invalid_job"

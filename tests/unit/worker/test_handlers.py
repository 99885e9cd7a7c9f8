"""The worker's FastStream handlers in-process: FastStream's test broker, a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from faststream.redis import RedisBroker, TestRedisBroker
from redis.asyncio import Redis

from echotune.common.messages import (
    ChatJob,
    ChatMessage,
    DoneEvent,
    FinishReason,
    Role,
    StartEvent,
    Timings,
)
from echotune.common.request_stream import Final, RequestStreams
from echotune.worker import handlers
from echotune.worker.app import create_app
from echotune.worker.metrics import WorkerMetrics
from echotune.worker.resources import Worker, open_worker
from echotune.worker.settings import WorkerSettings
from tests.support.streams import wait_for_final
from tests.support.workers import started_worker
from tests.unit.worker.conftest import DEMO


async def opened(worker: Worker, user: str = "u1") -> str:
    """A request as the gateway opens it: claimed, with its start event."""
    rid = f"r-{uuid.uuid4().hex}"
    gateway = RequestStreams(
        worker.redis, worker.settings.keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=60_000
    )
    start = StartEvent(request_id=rid, provider="demo", model="demo-1")
    await gateway.open(rid, "fingerprint", user, start)
    return rid


def long_job(request_id: str, deadline_s: float = 30) -> ChatJob:
    """A job for the demo provider whose answer takes a while."""
    return ChatJob(
        request_id=request_id,
        user_id="u1",
        messages=[ChatMessage(role=Role.USER, content="a long answer please " * 5)],
        provider="demo",
        model="demo-1",
        deadline_at=time.time() + deadline_s,
    )


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


UPSTREAM = {
    "name": "up",
    "kind": "openai",
    "base_url": "http://up.test/v1",
    "api_key": "sk-test",
    "models": ["m1"],
    "timeouts": {"connect": 1, "first_token": 2, "idle": 2, "total": 10},
}


def sse_answer(tokens: list[str]) -> httpx.Response:
    lines = [
        json.dumps({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]})
        for t in tokens
    ]
    stop = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    body = "".join(f"data: {line}\n\n" for line in [*lines, json.dumps(stop)]) + "data: [DONE]\n\n"
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def through_upstreams(
    settings: WorkerSettings, *providers: dict[str, Any], **fields: Any
) -> WorkerSettings:
    """``settings`` with these providers (the first the default) and these fields."""
    values = settings.model_dump(exclude={"providers", "fallbacks"})
    return WorkerSettings(
        **{**values, "default_provider": providers[0]["name"], **fields}, providers=list(providers)
    )


async def answer_from(
    settings: WorkerSettings,
    redis: Redis,
    upstream: Callable[[httpx.Request], httpx.Response],
    **job: Any,
) -> tuple[str, dict[str, Any]]:
    """One job for provider ``up`` run in-process, httpx's MockTransport standing in for the
    providers; its request id and final event."""
    broker = create_app(settings).broker
    async with (
        open_worker(settings, broker, transport=httpx.MockTransport(upstream)) as running,
        TestRedisBroker(broker) as test,
    ):
        broker.context.set_global("worker", running)
        rid = await opened(running)
        question = [ChatMessage(role=Role.USER, content="hi")]
        chat = ChatJob(
            request_id=rid,
            user_id="u1",
            messages=question,
            provider="up",
            model="m1",
            deadline_at=time.time() + 30,
            **job,
        )
        await test.publish(chat, stream=settings.keys.jobs)
        return rid, await wait_for_final(redis, settings.namespace, rid)


async def test_a_failed_call_is_retried_through_the_transport_seam(
    settings: WorkerSettings, redis: Redis
) -> None:
    """Retry and answer driven in-process: httpx's MockTransport stands in for the provider."""
    calls: list[int] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return sse_answer(["one ", "two"])

    settings = through_upstreams(settings, UPSTREAM, retry_base_s=0.01)
    rid, final = await answer_from(settings, redis, upstream)
    entries = await redis.xrange(settings.keys.events(rid))
    kinds = [f["type"] for _, f in entries]
    assert kinds[0] == "start"
    assert "retry" in kinds
    assert final["type"] == "done"
    text = "".join(json.loads(f["data"])["delta"] for _, f in entries if f["type"] == "delta")
    assert text == "one two"
    assert len(calls) == 2


async def streaming(running: Worker, broker: RedisBroker, redis: Redis) -> tuple[ChatJob, str]:
    """A long job published, its answer streaming: the job and its events stream's key."""
    rid = await opened(running)
    job, key = long_job(rid), running.settings.keys.events(rid)
    await broker.publish(job, stream=running.settings.keys.jobs)
    async with asyncio.timeout(5):
        while not [f for _, f in await redis.xrange(key) if f["type"] == "delta"]:
            await redis.xread({key: "$"}, block=1000)
    return job, key


async def test_a_job_published_twice_is_answered_once(
    settings: WorkerSettings, redis: Redis
) -> None:
    """A retried publish left two entries: the second took the job over and restarted it.

    On a real Redis: FastStream's test broker hands every message to every subscriber of the
    stream, the reclaiming one included, which a real consumer group never does.
    """
    async with started_worker(settings) as (running, broker):
        job, key = await streaming(running, broker, redis)
        await broker.publish(job, stream=settings.keys.jobs)
        final = await wait_for_final(redis, settings.namespace, job.request_id)
    assert final["type"] == "done"
    kinds = [f["type"] for _, f in await redis.xrange(key)]
    assert "failover" not in kinds, "the answer restarted"
    assert kinds.count("done") == 1


@pytest.mark.parametrize("handler", [handlers.reclaim_job, handlers.handle_job])
async def test_a_job_this_worker_holds_is_not_run_again_by_itself(
    settings: WorkerSettings, redis: Redis, handler: Callable[..., Awaitable[None]]
) -> None:
    """Reclaimed: Redis away longer than the reclaim period (a cluster failover) left the
    running job's entry idle, and the same worker's reclaimer ran it a second time (a new
    epoch fenced the first run off; the client saw the answer restart). Read again (the jobs
    stream lost the delivery): the new delivery replaced the run among the held jobs, so its
    entry was no longer kept fresh, for another worker to reclaim."""
    async with started_worker(settings) as (running, broker):
        job, key = await streaming(running, broker, redis)
        ((entry, held),) = running.jobs.by_entry().items()
        again = SimpleNamespace(raw_message={"message_ids": [entry.encode()]})
        await handler(job, running, again)
        assert running.jobs.by_entry()[entry] is held, "the run is no longer kept fresh"
        final = await wait_for_final(redis, settings.namespace, job.request_id)
    assert final["type"] == "done"
    kinds = [f["type"] for _, f in await redis.xrange(key)]
    assert "failover" not in kinds, "the answer restarted"
    assert kinds.count("done") == 1
    assert await redis.hget(settings.keys.meta(job.request_id), "epoch") == "1"


async def test_an_answer_past_its_deadline_says_its_text_is_partial(
    settings: WorkerSettings, redis: Redis
) -> None:
    """The deadline's error said ``partial=False`` after text was stored (found by the
    cluster chaos run, seed 20261201): a client would take the cut answer for a whole one."""
    fields = settings.model_dump(exclude={"providers"})
    slow = {**DEMO, "token_pace_ms": 100}  # about 6 s for the whole answer
    settings = WorkerSettings(**{**fields, "profile_timeout_s": 0.05}, providers=[slow])
    broker = create_app(settings).broker
    async with open_worker(settings, broker) as running, TestRedisBroker(broker) as test:
        broker.context.set_global("worker", running)
        rid = await opened(running)
        job = long_job(rid, deadline_s=3.0)  # time for a first token on a loaded machine
        await test.publish(job, stream=settings.keys.jobs)
        final = await wait_for_final(redis, settings.namespace, rid)
    kinds = [f["type"] for _, f in await redis.xrange(settings.keys.events(rid))]
    assert "delta" in kinds, "text was stored before the deadline"
    assert (final["type"], final["code"]) == ("error", "deadline_exceeded")
    assert final["partial"] is True


async def test_a_job_that_fails_unexpectedly_ends_its_answer_with_an_error(
    worker: tuple[Worker, TestRedisBroker], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in building the prompt (a play dated near year 1 overflowed) left the job pending:
    every worker that reclaimed it failed the same way, and the client waited for its
    deadline."""

    def broken(*_: object) -> None:
        raise OverflowError("date value out of range")

    monkeypatch.setattr("echotune.worker.jobs.build_prompt", broken)
    running, broker = worker
    rid = await opened(running)
    await broker.publish(long_job(rid), stream=running.settings.keys.jobs)
    final = await wait_for_final(redis, running.settings.namespace, rid, timeout=5)
    assert (final["type"], final["code"], final["partial"]) == ("error", "internal_error", False)


@pytest.mark.parametrize(
    ("second", "code", "retryable"),
    [(400, "request_refused", False), (503, "all_providers_failed", True)],
)
async def test_a_request_every_provider_refuses_is_not_retryable(
    settings: WorkerSettings, redis: Redis, second: int, code: str, retryable: bool
) -> None:
    """An upstream 400 (context too long) ended as a retryable ``all_providers_failed``: the
    OpenAI door made it a 502, and the SDK sent the same bad request twice more. When another
    provider failed otherwise, the answer may well come on a second try."""
    calls: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        refusal = {"message": "maximum context length exceeded", "code": "context_length_exceeded"}
        status = 400 if request.url.host == "up.test" else second
        return httpx.Response(status, json={"error": refusal})

    fallback = {**UPSTREAM, "name": "up2", "base_url": "http://up2.test/v1"}
    settings = through_upstreams(settings, UPSTREAM, fallback, retry_attempts=1)
    _, final = await answer_from(settings, redis, upstream, fallbacks=["up2"])
    assert (final["type"], final["code"], final["retryable"]) == ("error", code, retryable)
    assert calls == ["up.test", "up2.test"]


async def test_half_a_surrogate_pair_from_the_provider_does_not_stall_the_answer(
    settings: WorkerSettings, redis: Redis
) -> None:
    """JSON may escape half a surrogate pair, which UTF-8 (and Redis' client) cannot carry:
    the flusher failed that round and sent it again forever, and every answer of the process
    batched with it stalled. The provider's text now reads it as U+FFFD."""
    settings = through_upstreams(settings, UPSTREAM)
    answer = sse_answer(["one ", "\ud800", " two"])
    rid, final = await answer_from(settings, redis, lambda _: answer)
    assert final["type"] == "done"
    entries = await redis.xrange(settings.keys.events(rid))
    text = "".join(json.loads(f["data"])["delta"] for _, f in entries if f["type"] == "delta")
    assert text == "one \ufffd two"


async def test_an_answer_whose_appends_keep_failing_ends_with_an_error_not_done(
    worker: tuple[Worker, TestRedisBroker], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its append rounds were sent again forever (the answer never ended); given up, the
    answer must not end ``done`` (its text is not whole)."""
    running, broker = worker
    rid = await opened(running)
    append_many = running.streams.append_many

    async def failing(batches: Any, own: Any = None) -> Any:
        if any(batch.request_id == rid for batch in batches):
            raise TypeError("a bug while packing")
        return await append_many(batches, own)

    monkeypatch.setattr(running.streams, "append_many", failing)
    await broker.publish(long_job(rid), stream=running.settings.keys.jobs)
    final = await wait_for_final(redis, running.settings.namespace, rid, timeout=10)
    assert (final["type"], final["code"]) == ("error", "internal_error")


async def test_a_reclaimed_job_nobody_took_starts_its_answer_over(
    worker: tuple[Worker, TestRedisBroker], redis: Redis
) -> None:
    """A failover lost the first worker's take and the entries it wrote, which a client had
    seen (cluster chaos run, seed 20261201): the worker that reclaimed the job answered as if
    nothing had been sent, and the client kept the lost entries."""
    running, _ = worker
    rid = await opened(running)
    lost_entry = SimpleNamespace(raw_message={"message_ids": [b"1-1"]})
    await handlers.reclaim_job(long_job(rid), running, lost_entry)  # type: ignore[arg-type]
    final = await wait_for_final(redis, running.settings.namespace, rid)
    assert final["type"] == "done"
    entries = [f for _, f in await redis.xrange(running.settings.keys.events(rid))]
    restart = json.loads(entries[1]["data"])
    assert entries[1]["type"] == "failover"
    assert (restart["reason"], restart["discard_partial"]) == ("events_lost", True)


DONE = DoneEvent(
    finish_reason=FinishReason.STOP, provider="demo", model="demo-1", timings=Timings(total_ms=1)
)


@pytest.mark.single_node(reason="a Redis without replicas: no WAIT for one is ever met")
async def test_a_final_no_replica_held_in_time_is_counted(settings: WorkerSettings) -> None:
    """It was only logged: an operator could not see finals a failover may lose."""
    fields = settings.model_dump(exclude={"providers"})
    waiting = WorkerSettings(
        **{**fields, "redis_wait_replicas": 1, "redis_wait_ms": 10}, providers=[DEMO]
    )
    metrics = WorkerMetrics()
    async with open_worker(waiting, create_app(waiting).broker, metrics) as running:
        rid = await opened(running)
        taken = await running.streams.take(rid, waiting.consumer)
        written = await running.streams.append_final(rid, taken.fence, 1, DONE)
    assert written is Final.WRITTEN
    assert metrics.registry.get_sample_value("echotune_worker_unreplicated_finals_total") == 1


async def test_a_jobs_info_lines_all_name_its_request(
    settings: WorkerSettings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """FastStream's own "Received" and "Processed" lines, at INFO, came before the handler
    knew the request: ``rid=-`` in a README that says every line names its request."""
    root = logging.getLogger()
    async with started_worker(settings) as (running, broker):
        root.addHandler(caplog.handler)  # the app set the root's handlers
        caplog.set_level(logging.INFO)
        try:
            job = long_job(await opened(running), deadline_s=10)
            await broker.publish(job, stream=settings.keys.jobs)
            assert (await wait_for_final(redis, settings.namespace, job.request_id))["type"]
        finally:
            root.removeHandler(caplog.handler)
    broker_lines = [r.getMessage() for r in caplog.records if r.name.endswith(".broker")]
    assert not [line for line in broker_lines if "Received" in line or "Processed" in line]
    assert any(r.getMessage().startswith("job taken") for r in caplog.records), "heard nothing"

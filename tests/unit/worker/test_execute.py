"""How a held job's production goes: its take (with its provider's permit), what becomes the
answer's end, what is left for a reclaim."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faststream.redis import TestRedisBroker
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

from echotune.common import resp
from echotune.common.breaker import ACQUIRE
from echotune.common.logs import request_id_var
from echotune.common.messages import ChatJob, ErrorEvent
from echotune.common.request_stream import TAKE, UNTAKEN, RequestStreams
from echotune.worker import execute as execute_module
from echotune.worker import jobs
from echotune.worker.execute import _produce
from echotune.worker.inflight import InFlight
from echotune.worker.profile import LoadedProfile
from echotune.worker.resources import Worker
from tests.support.streams import wait_for_final
from tests.unit.worker.test_handlers import long_job, opened


def failing(exc: Exception) -> Any:
    async def produce() -> None:
        raise exc

    return SimpleNamespace(produce=produce, partial=[])


async def end_of(exc: Exception) -> Any:
    """Built per call: a module-level job's 30 s deadline had passed when xdist ran it later."""
    held = InFlight("r-00000001", "1-1")
    return await _produce(long_job("r-00000001"), held, failing(exc), SimpleNamespace())


async def test_a_bug_ends_the_answer_with_an_internal_error() -> None:
    final = await end_of(OverflowError("date value out of range"))
    assert isinstance(final, ErrorEvent)
    assert (final.code.value, final.partial) == ("internal_error", False)


@pytest.mark.parametrize(
    "exc", [RedisConnectionError("gone"), SlotNotCoveredError("a cluster slot has no node")]
)
async def test_redis_away_leaves_the_job_for_a_reclaim(exc: Exception) -> None:
    """A cluster's errors are not RedisErrors: a slot outage ended answers for good."""
    with pytest.raises(type(exc)):
        await end_of(exc)


def spy_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes]]:
    """What each hand-packed round trip to Redis carried (every script call goes so), and for
    which request."""
    sent: list[tuple[str, bytes]] = []
    real = resp.send

    async def send(redis: Redis, packed: bytes, replies: int) -> list[Any]:
        sent.append((request_id_var.get(), packed))
        return await real(redis, packed, replies)

    monkeypatch.setattr(resp, "send", send)
    return sent


async def cooled_down(running: Worker, until_ms: int = 0) -> None:
    """The demo provider's breaker is open until ``until_ms`` (Redis ms; 0: its cool-down is
    over, the next ask is a probe)."""
    key = running.settings.keys.breaker("demo")
    await running.redis.hset(key, mapping={"state": "open", "open_until": until_ms})


def during_the_prompts_build(
    running: Worker, monkeypatch: pytest.MonkeyPatch, work: Callable[[], Awaitable[None]]
) -> None:
    """Run ``work`` while the job's listening profile loads (after the take)."""
    load = running.profiles.load

    async def load_after_work(job: ChatJob) -> LoadedProfile:
        await work()
        return await load(job)

    monkeypatch.setattr(running.profiles, "load", load_after_work)


def gateway_streams(running: Worker) -> RequestStreams:
    keys = running.settings.keys
    return RequestStreams(
        running.redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=60_000
    )


Probing = tuple[Worker, TestRedisBroker, str]


@pytest.fixture
async def probing(worker: tuple[Worker, TestRedisBroker]) -> Probing:
    """A worker whose demo provider's next ask is a probe, and a request opened for a job."""
    running, broker = worker
    await cooled_down(running)
    return running, broker, await opened(running)


async def answered(running: Worker, broker: TestRedisBroker, rid: str) -> dict[str, Any]:
    """The final event of the answer to a job for ``rid``, published now."""
    await broker.publish(long_job(rid, deadline_s=10), stream=running.settings.keys.jobs)
    return await wait_for_final(running.redis, running.settings.namespace, rid)


async def handled(running: Worker, broker: TestRedisBroker, rid: str) -> None:
    """A job for ``rid``, published now, run to its end (whatever the end)."""
    await broker.publish(long_job(rid, deadline_s=10), stream=running.settings.keys.jobs)
    await running.pool.drain(5)


async def probe_is_free(running: Worker) -> bool:
    """Whether another worker's ask would be granted the probe now."""
    return (await running.breakers.acquire("demo")).probe


@pytest.mark.single_node  # the spy is on the single Redis's hand-packed round trips
async def test_the_take_and_the_providers_permit_cost_one_round_trip(
    worker: tuple[Worker, TestRedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, broker = worker
    rid = await opened(running)
    sent = spy_round_trips(monkeypatch)
    final = await answered(running, broker, rid)
    assert final["type"] == "done"
    takes = [packed for of, packed in sent if of == rid and TAKE.sha.encode() in packed]
    acquires = [packed for of, packed in sent if of == rid and ACQUIRE.sha.encode() in packed]
    assert len(takes) == 1
    assert acquires == takes, "the first attempt asked the breaker in a round trip of its own"


async def test_a_probe_asked_with_the_take_is_the_first_attempts(
    probing: Probing,
) -> None:
    """Asked again by the attempt, the probe would be refused as in flight: no answer."""
    running, broker, rid = probing
    final = await answered(running, broker, rid)
    assert final["type"] == "done"
    assert (await running.breakers.snapshot("demo")).state.value == "closed"


async def test_a_probe_asked_with_a_take_that_finds_the_answer_ended_is_given_back(
    probing: Probing,
) -> None:
    running, broker, rid = probing
    gateway = gateway_streams(running)
    await gateway.append_final(rid, UNTAKEN, 0, ErrorEvent(code="no_worker", message="none"))
    await handled(running, broker, rid)
    assert await probe_is_free(running), "the unused probe holds its lease until it lapses"


async def test_a_probe_left_unused_by_an_answer_cancelled_before_its_take_is_given_back(
    probing: Probing,
) -> None:
    running, broker, rid = probing
    gateway = gateway_streams(running)
    assert (await gateway.cancel(rid, "u1")).state == "cancelling"
    final = await answered(running, broker, rid)
    assert final["finish_reason"] == "cancelled"
    await running.pool.drain(5)
    assert await probe_is_free(running), "the unused probe holds its lease until it lapses"


async def test_a_refusal_asked_with_the_take_is_asked_again_at_the_call(
    worker: tuple[Worker, TestRedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cool-down ended while the prompt was built: the stale refusal skipped the provider."""
    running, broker = worker
    await cooled_down(running, until_ms=int(time.time() * 1000) + 600_000)
    during_the_prompts_build(running, monkeypatch, lambda: cooled_down(running))
    rid = await opened(running)
    final = await answered(running, broker, rid)
    assert final["type"] == "done", final


async def test_a_probe_asked_with_a_take_that_fails_is_given_back(
    probing: Probing,
) -> None:
    running, broker, rid = probing
    meta = running.settings.keys.meta(rid)
    await running.redis.delete(meta)
    await running.redis.set(meta, "not a hash")  # the take's script fails (WRONGTYPE)
    await handled(running, broker, rid)
    assert await probe_is_free(running), "the probe holds its lease until it lapses"


async def test_no_probe_is_asked_with_the_take_for_a_provider_the_job_will_not_call(
    worker: tuple[Worker, TestRedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's provider cannot honour it: its probe was held through the prompt's build,
    refusing every other worker's."""
    running, broker = worker
    refused = [SimpleNamespace(param="tools")]
    monkeypatch.setattr(jobs, "refusals", lambda kind, *_: refused if kind == "demo" else [])
    await cooled_down(running)
    free: list[bool] = []

    async def ask() -> None:
        free.append(await probe_is_free(running))

    during_the_prompts_build(running, monkeypatch, ask)
    rid = await opened(running)
    await answered(running, broker, rid)
    assert free == [True]


def stuck_in_the_prompts_build(running: Worker, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The prompt's build never ends; the event is set once it began (after the take)."""
    began = asyncio.Event()

    async def forever() -> None:
        began.set()
        await asyncio.Event().wait()

    during_the_prompts_build(running, monkeypatch, forever)
    return began


async def test_a_probe_left_unused_by_an_answer_past_its_deadline_is_given_back(
    probing: Probing, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, broker, rid = probing
    stuck_in_the_prompts_build(running, monkeypatch)
    await broker.publish(long_job(rid, deadline_s=0.3), stream=running.settings.keys.jobs)
    final = await wait_for_final(running.redis, running.settings.namespace, rid)
    assert final["code"] == "deadline_exceeded", final
    await running.pool.drain(5)
    assert await probe_is_free(running), "the unused probe holds its lease until it lapses"


async def test_a_probe_left_unused_by_a_worker_shutting_down_is_given_back(
    probing: Probing, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, broker, rid = probing
    began = stuck_in_the_prompts_build(running, monkeypatch)
    await broker.publish(long_job(rid, deadline_s=10), stream=running.settings.keys.jobs)
    await began.wait()
    await running.pool.drain(0)  # the shutdown's drain: nothing finishes, the job is cancelled
    final = await wait_for_final(running.redis, running.settings.namespace, rid)
    assert final["code"] == "shutdown", final
    assert await probe_is_free(running), "the unused probe holds its lease until it lapses"


@pytest.mark.parametrize("with_the_take", [True, False])
async def test_a_breaker_leaving_open_for_a_probe_is_a_counted_transition(
    probing: Probing, monkeypatch: pytest.MonkeyPatch, with_the_take: bool
) -> None:
    """The acquire moves open → half_open and told nobody: only closed → open and
    half_open → closed were ever counted."""
    running, broker, rid = probing
    if not with_the_take:  # the attempt asks for the probe itself
        monkeypatch.setattr(execute_module, "starts_with_own", lambda job, chain: False)
    assert (await answered(running, broker, rid))["type"] == "done"
    counted = running.metrics.registry.get_sample_value
    for old, new in (("open", "half_open"), ("half_open", "closed")):
        labels = {"echotune_provider": "demo", "from_state": old, "to_state": new}
        assert counted("echotune_breaker_transitions_total", labels) == 1, (old, new)

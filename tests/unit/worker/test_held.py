"""A held job's entry is kept fresh; its run stops early only when another worker took the
entry over (a vanished entry is no takeover: the run goes on and ends the answer). A run
taken over through another entry of its job lets its own entry go."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from faststream.redis import RedisBroker, TestRedisBroker
from redis.asyncio import Redis

from echotune.common import job_queue
from echotune.common.keys import JOBS_GROUP, Keys
from echotune.common.messages import ChatJob
from echotune.common.request_stream import Take
from echotune.worker import upkeep
from echotune.worker.conversations import ConversationContext, ConversationStore
from echotune.worker.execute import execute
from echotune.worker.inflight import InFlight
from echotune.worker.resources import Worker
from echotune.worker.settings import WorkerSettings
from echotune.worker.writer import EventWriter
from tests.support.streams import wait_for_final
from tests.support.workers import demo, worker_settings
from tests.support.workers import started_worker as started
from tests.unit.worker.test_handlers import long_job, opened
from tests.unit.worker.test_shutdown import first

PACED = demo(40)


async def delivered(redis: Redis, keys: Keys, consumer: str) -> str:
    """A job entry added and delivered to ``consumer``: its id."""
    await job_queue.ensure_group(redis, keys)
    await redis.xadd(keys.jobs, {"job": "{}"})
    reply = await redis.xreadgroup(JOBS_GROUP, consumer, {keys.jobs: ">"}, count=1)
    return str(reply[0][1][0][0])


async def test_only_an_entry_pending_with_another_worker_is_taken_over(redis: Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    mine, reclaimed, acknowledged = [await delivered(redis, keys, "a") for _ in range(3)]
    await redis.xclaim(keys.jobs, JOBS_GROUP, "b", 0, [reclaimed], justid=True)
    await redis.xack(keys.jobs, JOBS_GROUP, acknowledged)  # e.g. by a duplicate's take
    entries = [mine, reclaimed, acknowledged]
    assert await job_queue.refresh_held(redis, keys, "a", entries) == [reclaimed]


async def test_an_entry_is_let_go_only_by_the_worker_holding_it(redis: Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    mine, reclaimed = [await delivered(redis, keys, "a") for _ in range(2)]
    await redis.xclaim(keys.jobs, JOBS_GROUP, "b", 0, [reclaimed], justid=True)
    assert [await job_queue.let_go(redis, keys, "a", e) for e in (mine, reclaimed)] == [True, False]
    assert await pending_with(redis, keys, reclaimed) == "b"
    assert await pending_with(redis, keys, mine) is None


def started_worker(redis_url: str) -> AbstractAsyncContextManager[tuple[Worker, RedisBroker]]:
    """A worker refreshing its entries every 0.3 s, answering at 40 ms a token."""
    return started(worker_settings(redis_url, PACED, reclaim_idle_s=0.9))


async def test_an_answer_whose_jobs_entry_vanished_is_still_ended(
    redis_server_url: str, redis: Redis
) -> None:
    """The jobs stream's node lost its data (a cluster shard restarted empty) and the group was
    created again: the run took that for a takeover and stopped with no final, so the client
    waited for the gateway's own deadline (630 s by default)."""
    async with started_worker(redis_server_url) as (running, broker):
        keys = running.settings.keys
        rid = await opened(running)
        await broker.publish(long_job(rid, deadline_s=60), stream=keys.jobs)
        await first(redis, keys.events(rid), "delta")
        await redis.delete(keys.jobs)
        await job_queue.ensure_group(redis, keys)
        final = await wait_for_final(redis, running.settings.namespace, rid, timeout=20)
    assert final["type"] == "done", final


async def pending_with(redis: Redis, keys: Keys, entry_id: str) -> str | None:
    pending = await redis.xpending_range(keys.jobs, JOBS_GROUP, entry_id, entry_id, 1)
    return str(pending[0]["consumer"]) if pending else None


@pytest.fixture
def settings(redis_server_url: str) -> WorkerSettings:
    """The in-process worker's (``worker``): answers at 40 ms a token."""
    return worker_settings(redis_server_url, PACED)


async def test_a_run_fenced_through_another_entry_of_its_job_lets_its_own_entry_go(
    worker: tuple[Worker, TestRedisBroker], redis: Redis
) -> None:
    """A retried publication left two entries of one job; B runs the second, the first is
    reclaimed from a dead worker and taken over. B's entry stayed pending, unrefreshed: its
    reclaim took the job over again, and so on, every reclaim period, for as long as the
    answer lasted."""
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    rid = await opened(running)
    job = long_job(rid, deadline_s=60)
    first_entry, second_entry = [await delivered(redis, keys, me) for _ in range(2)]
    b = asyncio.create_task(execute(running, job, InFlight(rid, second_entry), first=True))
    await first(redis, keys.events(rid), "delta")
    c = asyncio.create_task(execute(running, job, InFlight(rid, first_entry), first=False))
    try:
        assert await asyncio.wait_for(b, 10) is False  # fenced off: C has the job
        assert await pending_with(redis, keys, second_entry) is None, "B's entry stayed pending"
        assert await pending_with(redis, keys, first_entry) == me, "C's entry was let go"
        assert await asyncio.wait_for(c, 20) is True
    finally:
        for run in (b, c):
            run.cancel()
        await asyncio.gather(b, c, return_exceptions=True)


async def test_a_run_whose_take_redis_lost_leaves_its_entry_for_a_reclaim(
    worker: tuple[Worker, TestRedisBroker], redis: Redis
) -> None:
    """Fenced off by no other take: acknowledging the entry would leave the job to nobody."""
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    rid = await opened(running)
    job = long_job(rid, deadline_s=60)
    entry = await delivered(redis, keys, me)
    run = asyncio.create_task(execute(running, job, InFlight(rid, entry), first=True))
    try:
        await first(redis, keys.events(rid), "delta")
        await redis.hset(keys.meta(rid), "epoch", 0)  # Redis lost the take
        await redis.hdel(keys.meta(rid), "taker")
        assert await asyncio.wait_for(run, 10) is False
        assert await pending_with(redis, keys, entry) == me, "the job was left to nobody"
        reclaimed = execute(running, job, InFlight(rid, entry), first=False)
        assert await asyncio.wait_for(reclaimed, 20) is True
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    final = await wait_for_final(redis, running.settings.namespace, rid)
    assert final["type"] == "done", final


async def test_a_job_waiting_for_a_slot_whose_entry_another_worker_holds_is_stopped(
    worker: tuple[Worker, TestRedisBroker], redis: Redis
) -> None:
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    waiting, reclaimed = [await delivered(redis, keys, me) for _ in range(2)]
    held = {entry: running.jobs.hold(f"r-{entry}", entry) for entry in (waiting, reclaimed)}
    await redis.xclaim(keys.jobs, JOBS_GROUP, "worker-b", 0, [reclaimed], justid=True)
    await upkeep.refresh(running)
    assert (held[waiting].reason, held[reclaimed].reason) == (None, "fenced")


async def streaming_with_its_entry_at_b(
    running: Worker, broker: RedisBroker, redis: Redis, b: str = "worker-b"
) -> tuple[str, str, InFlight]:
    """A job this worker took and streams, whose entry worker ``b`` holds now: its request id,
    its entry, its run."""
    keys = running.settings.keys
    rid = await opened(running)
    await broker.publish(long_job(rid, deadline_s=60), stream=keys.jobs)
    await first(redis, keys.events(rid), "delta")
    ((entry, held),) = running.jobs.by_entry().items()
    await redis.xclaim(keys.jobs, JOBS_GROUP, b, 0, [entry], justid=True)
    return rid, entry, held


async def test_a_taken_job_whose_entry_another_worker_now_holds_is_not_stopped(
    redis_server_url: str, redis: Redis
) -> None:
    """The jobs stream lost the delivery (a failover) and gave the entry to worker B, which
    finds the job taken (a duplicate) and acknowledges it: the run that has the job was
    stopped with no final. (A real takeover stops it: next test.)"""
    async with started_worker(redis_server_url) as (running, broker):
        keys = running.settings.keys
        rid, entry, held = await streaming_with_its_entry_at_b(running, broker, redis)
        await upkeep.refresh(running)
        assert held.reason is None
        assert (await running.streams.take(rid, "worker-b", first=True)).state is Take.DUPLICATE
        await redis.xack(keys.jobs, JOBS_GROUP, entry)
        final = await wait_for_final(redis, running.settings.namespace, rid, timeout=20)
        kinds = [fields["type"] for _, fields in await redis.xrange(keys.events(rid))]
    assert final["type"] == "done", final
    assert "failover" not in kinds, "the answer was restarted"


@contextlib.asynccontextmanager
async def a_streaming_with_its_entry_at(
    b: Worker, settings: WorkerSettings, redis: Redis
) -> AsyncIterator[tuple[Worker, str, str, InFlight]]:
    """Worker A (``worker-a``) streaming a job whose entry the jobs stream gave again to B:
    A, the request id, the entry and A's run."""
    mine = settings.model_copy(update={"consumer": "worker-a", "reclaim_idle_s": 0.9})
    async with started(mine) as (running, broker):
        rid, entry, held = await streaming_with_its_entry_at_b(
            running, broker, redis, b.settings.consumer
        )
        yield running, rid, entry, held


async def b_runs_it(b: Worker, rid: str, entry: str) -> bool:
    """B's run of the entry given to it again (a first delivery)."""
    return await execute(b, long_job(rid, deadline_s=60), b.jobs.hold(rid, entry), first=True)


async def test_a_duplicate_delivery_of_a_running_jobs_entry_is_handed_back_to_its_worker(
    worker: tuple[Worker, TestRedisBroker], settings: WorkerSettings, redis: Redis
) -> None:
    """The jobs stream lost the delivery and gave the entry to worker B, which found the job
    taken and acknowledged the entry: the job was left with no pending entry, so had its
    worker died then, nobody would have reclaimed it (the gateway's deadline ended it)."""
    b, _ = worker
    async with a_streaming_with_its_entry_at(b, settings, redis) as (running, rid, entry, held):
        keys = running.settings.keys
        if await b_runs_it(b, rid, entry):
            await redis.xack(keys.jobs, JOBS_GROUP, entry)  # what B's pool does then
        assert await pending_with(redis, keys, entry) == "worker-a", "the job lost its entry"
        final = await wait_for_final(redis, running.settings.namespace, rid, timeout=20)
        assert final["type"] == "done", final
        assert held.reason is None
    assert await pending_with(redis, keys, entry) is None, "its worker did not acknowledge it"


async def test_an_entry_handed_back_to_a_run_that_let_it_go_meanwhile_is_acknowledged(
    worker: tuple[Worker, TestRedisBroker],
    settings: WorkerSettings,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between B's duplicate take and its hand-over, C took the job through a second entry
    and A, fenced off, found its entry with B and let nothing go: the entry handed to A was
    left unrefreshed, for a reclaim that would take the job over from C's live run."""
    b, _ = worker
    hand_over = job_queue.hand_over

    async def c_takes_first(*args: Any) -> bool:
        await running.streams.take(rid, "worker-c", entry="1-1")  # a retried publication's
        await running.pool.drain(10)  # A is fenced off at its next write and ends
        return await hand_over(*args)

    monkeypatch.setattr(job_queue, "hand_over", c_takes_first)
    async with a_streaming_with_its_entry_at(b, settings, redis) as (running, rid, entry, _):
        assert await b_runs_it(b, rid, entry) is False
        assert not running.jobs.by_entry()
        assert await pending_with(redis, running.settings.keys, entry) is None, "left pending"


async def test_an_entry_handed_back_after_redis_lost_its_runs_take_is_left_for_a_reclaim(
    worker: tuple[Worker, TestRedisBroker],
    settings: WorkerSettings,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between B's duplicate take and its hand-over, Redis lost A's take: B, seeing another
    fence stored, acknowledged the entry it had handed to A, and nobody had the job."""
    b, _ = worker
    hand_over = job_queue.hand_over

    async def the_take_is_lost_first(*args: Any) -> bool:
        await redis.hset(keys.meta(rid), "epoch", 0)
        await redis.hdel(keys.meta(rid), "taker", "entry", "entry_taker")
        return await hand_over(*args)

    monkeypatch.setattr(job_queue, "hand_over", the_take_is_lost_first)
    async with a_streaming_with_its_entry_at(b, settings, redis) as (running, rid, entry, _):
        keys = running.settings.keys
        assert await b_runs_it(b, rid, entry) is False
        assert await pending_with(redis, keys, entry) == "worker-a", "the job was left to nobody"
        final = await wait_for_final(redis, running.settings.namespace, rid, timeout=20)
    assert final["type"] == "done", final


async def test_a_run_stopped_as_fenced_that_still_holds_the_fence_leaves_its_entry_for_a_reclaim(
    redis_server_url: str, redis: Redis
) -> None:
    """Stopped by the refresh while its take was on its way (its entry was with a worker that
    then found the job a duplicate and handed it back): the run let its entry go, so no final
    was written and nobody had the job until the gateway's deadline."""
    async with started_worker(redis_server_url) as (running, broker):
        keys = running.settings.keys
        rid = await opened(running)
        await broker.publish(long_job(rid, deadline_s=60), stream=keys.jobs)
        await first(redis, keys.events(rid), "delta")
        ((_, held),) = running.jobs.by_entry().items()
        held.stop("fenced")
        final = await wait_for_final(redis, running.settings.namespace, rid, timeout=20)
    assert final["type"] == "done", final


async def test_a_taken_job_another_worker_took_over_is_stopped_before_its_next_write(
    redis_server_url: str, redis: Redis
) -> None:
    """Waiting for a slow provider, the run writes nothing that its fence could refuse."""
    async with started_worker(redis_server_url) as (running, broker):
        rid, _, held = await streaming_with_its_entry_at_b(running, broker, redis)
        await running.streams.take(rid, "worker-b")
        await upkeep.refresh(running)
        assert held.reason == "fenced"


class Turns:
    """A conversation store that keeps the turns it is asked to record."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, int]] = []

    async def context(self, job: ChatJob) -> ConversationContext:
        return ConversationContext()

    def records(self, job: ChatJob) -> bool:
        return True

    async def append(self, job: ChatJob, answer: str, epoch: int = 1, taken_at: float = 0) -> None:
        self.recorded.append((answer, epoch))


async def test_a_producer_whose_take_redis_lost_records_no_conversation_turn(
    worker: tuple[Worker, TestRedisBroker], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost the take after the answer's last append; the next producer took the job at
    the same epoch. The stale producer recorded its turn before its final was refused, so the
    next one's turn was skipped as recorded already, and the conversation kept an answer its
    client never got (and its answer was counted as ended, as the next one's was)."""
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    running.conversations = turns = Turns()  # type: ignore[assignment]
    ended: list[object] = []
    monkeypatch.setattr(running.metrics, "job_ended", lambda *outcome: ended.append(outcome))
    rid = await opened(running)
    flush = EventWriter.flush

    async def then_the_take_is_lost(writer: EventWriter) -> None:
        await flush(writer)
        await redis.hset(keys.meta(rid), "epoch", 0)
        await redis.hdel(keys.meta(rid), "taker")
        await running.streams.take(rid, "worker-w", first=True)

    monkeypatch.setattr(EventWriter, "flush", then_the_take_is_lost)
    job = long_job(rid).model_copy(update={"conversation_id": "c-1"})
    entry = await delivered(redis, keys, me)
    assert await execute(running, job, InFlight(rid, entry), first=True) is False
    assert turns.recorded == []
    assert ended == [], "counted as ended"


async def test_a_turn_recorded_by_a_producer_whose_take_redis_lost_next_is_replaced(
    worker: tuple[Worker, TestRedisBroker],
    redis: Redis,
    store: ConversationStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis lost the take just after the run checked its fence: the run recorded its turn,
    and the next producer, of the same epoch, found the turn recorded and kept it."""
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    running.conversations = store
    rid = await opened(running)
    current_take = running.streams.current_take

    async def then_the_take_is_lost(request_id: str) -> tuple[str, str, int]:
        monkeypatch.undo()
        took = await current_take(request_id)
        await redis.hset(keys.meta(rid), "epoch", 0)
        await redis.hdel(keys.meta(rid), "taker")
        return took

    monkeypatch.setattr(running.streams, "current_take", then_the_take_is_lost)
    job = long_job(rid).model_copy(update={"conversation_id": f"c-{rid}"})
    entry = await delivered(redis, keys, me)
    assert await execute(running, job, InFlight(rid, entry), first=True) is False
    stale = await store.collection.find_one({"_id": job.conversation_id})
    assert await execute(running, job, InFlight(rid, entry), first=False) is True  # the reclaim
    document = await store.collection.find_one({"_id": job.conversation_id})
    assert stale is not None
    assert document is not None
    assert [t["role"] for t in document["turns"]] == ["user", "assistant"]
    assert document["turns"][1]["at"] > stale["turns"][1]["at"], "the stale turn was kept"


async def test_a_run_cancelled_then_fenced_off_lets_its_own_entry_go(
    worker: tuple[Worker, TestRedisBroker], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled, B was fenced off at its final by C's take through the job's other entry: B
    let nothing go, as only a run stopped as fenced did, and its entry was reclaimed later."""
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    rid = await opened(running)
    first_entry, second_entry = [await delivered(redis, keys, me) for _ in range(2)]
    await redis.set(keys.cancel_flag(rid), "1")
    flush = EventWriter.flush

    async def then_c_takes_over(writer: EventWriter) -> None:
        await flush(writer)
        await running.streams.take(rid, "worker-c", entry=first_entry)

    monkeypatch.setattr(EventWriter, "flush", then_c_takes_over)
    b = InFlight(rid, second_entry)
    assert await execute(running, long_job(rid), b, first=True) is False
    assert b.reason == "cancelled"
    assert await pending_with(redis, keys, second_entry) is None, "B's entry stayed pending"


async def test_a_run_taken_over_through_its_own_entry_does_not_let_it_go(
    worker: tuple[Worker, TestRedisBroker], redis: Redis
) -> None:
    """W2 reclaimed the entry from a stalled run and took the job through it, then died; this
    process reclaimed the entry back (held here already, it is not run again). Fenced off, the
    old run acknowledged it as another entry's: the job had no entry left, and nobody ran it."""
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    rid = await opened(running)
    entry = await delivered(redis, keys, me)
    run = asyncio.create_task(execute(running, long_job(rid, 60), InFlight(rid, entry), first=True))
    try:
        await first(redis, keys.events(rid), "delta")
        await redis.xclaim(keys.jobs, JOBS_GROUP, "dead-w2", 0, [entry], justid=True)
        await running.streams.take(rid, "dead-w2", entry=entry)
        await redis.xclaim(keys.jobs, JOBS_GROUP, me, 0, [entry], justid=True)
        assert await asyncio.wait_for(run, 10) is False
        assert await pending_with(redis, keys, entry) == me, "the job was left to nobody"
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_a_run_fenced_off_then_cancelled_by_the_shutdown_lets_its_own_entry_go(
    worker: tuple[Worker, TestRedisBroker], redis: Redis
) -> None:
    """C took the job through its other entry; B's worker shut down before B noticed. B's end
    of the answer was refused, and B let nothing go: its entry was reclaimed once more after
    the process exited, and that reclaim took the job over from C's live run."""
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    rid = await opened(running)
    first_entry, second_entry = [await delivered(redis, keys, me) for _ in range(2)]
    b = InFlight(rid, second_entry)
    run = asyncio.create_task(execute(running, long_job(rid, 60), b, first=True))
    await first(redis, keys.events(rid), "delta")
    await running.streams.take(rid, "worker-c", entry=first_entry)
    run.cancel()  # the shutdown's drain deadline
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)
    assert not b.ended
    assert await pending_with(redis, keys, second_entry) is None, "B's entry stayed pending"
    assert await pending_with(redis, keys, first_entry) == me


async def test_a_fenced_run_letting_its_entry_go_when_the_shutdown_comes_still_does(
    worker: tuple[Worker, TestRedisBroker], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shutdown's cancel landed while the run, fenced off through the job's other entry,
    read the current take to let its entry go: the entry stayed pending, and its reclaim took
    the job over from the live run once the process had exited."""
    running, _ = worker
    keys, me = running.settings.keys, running.settings.consumer
    rid = await opened(running)
    first_entry, second_entry = [await delivered(redis, keys, me) for _ in range(2)]
    reading, go_on, let_go = asyncio.Event(), asyncio.Event(), asyncio.Event()
    current_take, acknowledge = running.streams.current_take, job_queue.let_go

    async def slow_current_take(request_id: str) -> tuple[str, str, int]:
        reading.set()
        await go_on.wait()
        return await current_take(request_id)

    async def acknowledged(*args: Any) -> bool:
        try:
            return await acknowledge(*args)
        finally:
            let_go.set()

    monkeypatch.setattr(running.streams, "current_take", slow_current_take)
    monkeypatch.setattr(job_queue, "let_go", acknowledged)
    run = asyncio.create_task(
        execute(running, long_job(rid, 60), InFlight(rid, second_entry), first=True)
    )
    await first(redis, keys.events(rid), "delta")
    await running.streams.take(rid, "worker-c", entry=first_entry)
    async with asyncio.timeout(10):
        await reading.wait()  # fenced off at its next write, it is letting its entry go
        run.cancel()  # the shutdown's drain deadline
        with pytest.raises(asyncio.CancelledError):
            await run
        go_on.set()
        await let_go.wait()
    assert await pending_with(redis, keys, second_entry) is None, "its entry stayed pending"

"""Appending a request's events: buffered, idempotent whatever the network does, fenced."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.common.messages import StartEvent
from echotune.common.redis import create_redis
from echotune.common.request_stream import AppendRefused, Batch, RequestStreams
from echotune.worker.writer import AppendFlusher, EventWriter, Refused
from tests.support.flaky_proxy import reply_dropping_proxy


class Producer:
    """A flusher over ``redis`` and the writer of one taken request."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.streams = RequestStreams(
            redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=5000
        )
        self.flusher = AppendFlusher(self.streams)
        self.cancelled: list[bool] = []
        self.refused: list[AppendRefused] = []

    async def writer(self, request_id: str, owner: str = "w1") -> EventWriter:
        taken = await self.streams.take(request_id, owner)
        return EventWriter(
            self.flusher,
            request_id,
            taken.epoch,
            on_cancel=lambda: self.cancelled.append(True),
            on_refused=self.refused.append,
        )


async def opened(redis: Redis, keys: Keys) -> str:
    rid = f"r-{uuid.uuid4().hex}"
    streams = RequestStreams(redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=5000)
    start = StartEvent(request_id=rid, provider="p", model="m")
    await streams.open(rid, "fingerprint", "u", start)
    return rid


@pytest.fixture
def keys() -> Keys:
    return Keys(f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def running(redis: Redis, keys: Keys) -> AsyncIterator[Producer]:
    producer = Producer(redis, keys)
    task = asyncio.create_task(producer.flusher.run())
    yield producer
    task.cancel()
    await asyncio.wait({task})
    await producer.flusher.aclose()


async def deltas(redis: Redis, keys: Keys, rid: str) -> list[str]:
    entries = await redis.xrange(keys.events(rid))
    return [json.loads(f["data"])["delta"] for _, f in entries if f["type"] == "delta"]


@pytest.mark.single_node(reason="a proxy in front of the one Redis")
async def test_an_append_whose_reply_was_lost_is_applied_once(
    redis_server_url: str, redis: Redis, keys: Keys
) -> None:
    """redis-py retries a command on a fresh connection: a lost reply meant a doubled token."""
    rid = await opened(redis, keys)
    async with reply_dropping_proxy(redis_server_url) as proxy:
        client = create_redis(proxy.url)
        producer = Producer(client, keys)
        flushing = asyncio.create_task(producer.flusher.run())
        writer = await producer.writer(rid)
        for text in ("one ", "two ", "three"):
            if text == "two ":
                proxy.drop_next_reply(b"two ")
            writer.delta(text)
            await writer.flush()
        flushing.cancel()
        await asyncio.wait({flushing})
        await producer.flusher.aclose()
        await client.aclose()
    assert proxy.dropped == 1
    assert await deltas(redis, keys, rid) == ["one ", "two ", "three"]


async def test_text_buffered_while_a_write_is_in_flight_is_merged(
    redis: Redis, keys: Keys, running: Producer
) -> None:
    rid = await opened(redis, keys)
    writer = await running.writer(rid)
    for n in range(50):
        writer.delta(f"{n} ")
    await writer.flush()
    written = await deltas(redis, keys, rid)
    assert "".join(written) == "".join(f"{n} " for n in range(50))
    assert len(written) < 50


async def test_a_producer_whose_job_was_taken_over_is_refused(
    redis: Redis, keys: Keys, running: Producer
) -> None:
    rid = await opened(redis, keys)
    old = await running.writer(rid, "w1")
    old.delta("old ")
    await old.flush()
    new = await running.writer(rid, "w2")  # reclaimed: a new epoch
    old.delta("stale ")
    with pytest.raises(Refused):
        await old.flush()
    assert running.refused == [AppendRefused.FENCED]
    new.delta("fresh")
    await new.flush()
    assert await deltas(redis, keys, rid) == ["old ", "fresh"]


async def test_a_cancel_flag_is_reported_by_the_next_append(
    redis: Redis, keys: Keys, running: Producer
) -> None:
    rid = await opened(redis, keys)
    writer = await running.writer(rid)
    await redis.set(keys.cancel_flag(rid), "1")
    writer.delta("x")
    await writer.flush()
    assert running.cancelled == [True]


async def test_requests_flushed_in_one_round_each_get_their_own_text(
    redis: Redis, keys: Keys, running: Producer
) -> None:
    rids = [await opened(redis, keys) for _ in range(3)]
    writers = [await running.writer(rid) for rid in rids]
    for n in range(20):
        for i, writer in enumerate(writers):
            writer.delta(f"{i}.{n} ")
    await asyncio.gather(*(writer.flush() for writer in writers))
    for i, rid in enumerate(rids):
        assert "".join(await deltas(redis, keys, rid)) == "".join(f"{i}.{n} " for n in range(20))


async def test_busy_rounds_are_spaced_and_shared_while_an_idle_token_goes_at_once(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round per token or two cost a worker a write, a read and a script call each at 100
    streams: tokens that come within ``round_s`` of the last round share the next one."""
    producer = Producer(redis, keys)
    producer.flusher = AppendFlusher(producer.streams, round_s=0.3, full_at=2)
    rounds: list[list[str]] = []
    append_many = producer.streams.append_many

    async def recorded(batches: list[Batch], own: object = None) -> object:
        rounds.append(sorted(batch.request_id for batch in batches))
        return await append_many(batches, own)  # type: ignore[arg-type]

    monkeypatch.setattr(producer.streams, "append_many", recorded)
    rids = sorted([await opened(redis, keys) for _ in range(2)])
    first, second = [await producer.writer(rid) for rid in rids]
    flushing = asyncio.create_task(producer.flusher.run())
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        first.delta("idle ")
        await first.flush()
        assert loop.time() - began < 0.2, "the first token went at once"
        first.delta("busy ")
        await asyncio.sleep(0.05)  # within the spacing
        second.delta("busy ")
        await asyncio.gather(first.flush(), second.flush())
        assert loop.time() - began >= 0.3, "the next round waited for the spacing"
        assert rounds == [[rids[0]], rids]
        assert await deltas(redis, keys, rids[0]) == ["idle ", "busy "]
    finally:
        flushing.cancel()
        await asyncio.wait({flushing})
        await producer.flusher.aclose()


def test_rounds_are_spaced_in_proportion_to_the_writing_requests_up_to_round_s() -> None:
    """Full spacing for a few answers would cost their tokens latency for little CPU."""
    streams = RequestStreams(
        create_redis("redis://127.0.0.1:1"),
        Keys("t"),
        request_ttl_s=60,
        final_ttl_s=60,
        reader_ttl_ms=5000,
    )
    flusher = AppendFlusher(streams, round_s=0.004, full_at=4)
    writers = [
        EventWriter(flusher, f"r{n}", 1, on_cancel=lambda: None, on_refused=lambda _: None)
        for n in range(6)
    ]
    assert flusher._spacing() == pytest.approx(0.004)  # capped at full_at
    for writer in writers[:4]:
        writer.close()
    writers[0].close()  # closing twice counts once
    assert flusher._spacing() == pytest.approx(0.002)
    for writer in writers[4:]:
        writer.close()
    assert flusher._spacing() == 0

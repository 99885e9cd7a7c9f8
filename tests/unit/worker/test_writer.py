"""Appending a request's events: buffered, idempotent whatever the network does, fenced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from redis.asyncio import Redis
from redis.exceptions import ClusterCrossSlotError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from echotune.common import resp
from echotune.common.keys import Keys
from echotune.common.messages import (
    DoneEvent,
    FailoverEvent,
    FinishReason,
    StartEvent,
    Timings,
)
from echotune.common.redis import create_redis
from echotune.common.request_stream import (
    Appended,
    AppendRefused,
    Batch,
    Final,
    RequestStreams,
)
from echotune.worker.hold import Hold
from echotune.worker.writer import (
    AppendFlusher,
    EventWriter,
    Refused,
    WriteFailed,
    redis_away,
)
from tests.support.flaky_proxy import reply_dropping_proxy


class Producer:
    """A flusher over ``redis`` and the writer of one taken request."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        kind: type[RequestStreams] = RequestStreams,
        hold: Hold | None = None,
    ) -> None:
        self.streams = kind(redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=5000)
        self.flusher = AppendFlusher(self.streams, hold)
        self.cancelled: list[bool] = []
        self.refused: list[AppendRefused] = []

    async def writer(self, request_id: str, owner: str = "w1") -> EventWriter:
        taken = await self.streams.take(request_id, owner)
        return EventWriter(
            self.flusher,
            request_id,
            taken.fence,
            on_cancel=lambda: self.cancelled.append(True),
            on_refused=self.refused.append,
            restart=RESTART,
        )


RESTART = FailoverEvent(
    from_provider="p", to_provider="p", to_model="m", reason="events_lost", discard_partial=True
)
DONE = DoneEvent(
    finish_reason=FinishReason.STOP, provider="p", model="m", timings=Timings(total_ms=1)
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


@contextlib.asynccontextmanager
async def flushing(producer: Producer) -> AsyncIterator[Producer]:
    task = asyncio.create_task(producer.flusher.run())
    try:
        yield producer
    finally:
        task.cancel()
        await asyncio.wait({task})
        await producer.flusher.aclose()


@pytest.fixture
async def running(redis: Redis, keys: Keys) -> AsyncIterator[Producer]:
    async with flushing(Producer(redis, keys)) as producer:
        yield producer


@pytest.fixture
async def buggy(redis: Redis, keys: Keys) -> AsyncIterator[tuple[Producer, PackingBug]]:
    """A running producer whose streams fail the batches of their ``bad`` request."""
    async with flushing(Producer(redis, keys, PackingBug)) as producer:
        assert isinstance(producer.streams, PackingBug)
        yield producer, producer.streams


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


async def lose_the_last_entry(redis: Redis, keys: Keys, rid: str) -> None:
    """What a failover does to a write the old primary acknowledged and never replicated."""
    [(entry_id, _)] = await redis.xrevrange(keys.events(rid), count=1)
    await redis.xdel(keys.events(rid), entry_id)
    await redis.hincrby(keys.meta(rid), "seq", -1)


async def as_read(redis: Redis, keys: Keys, rid: str) -> tuple[list[str], str]:
    """The stored entries' types, and the text a client reading them ends with."""
    kinds, text = [], ""
    for _, fields in await redis.xrange(keys.events(rid)):
        kinds.append(fields["type"])
        data = json.loads(fields["data"])
        if fields["type"] == "delta":
            text += data["delta"]
        elif fields["type"] == "failover" and data["discard_partial"]:
            text = ""
    return kinds, text


async def written_then_lost(
    redis: Redis, keys: Keys, running: Producer, *texts: str
) -> tuple[str, EventWriter]:
    """A request whose writer appended ``texts``, one at a time; Redis then lost the last."""
    rid = await opened(redis, keys)
    writer = await running.writer(rid)
    for text in texts:
        writer.delta(text)
        await writer.flush()
    await lose_the_last_entry(redis, keys, rid)
    return rid, writer


async def test_entries_redis_lost_are_replayed_behind_a_restart(
    redis: Redis, keys: Keys, running: Producer
) -> None:
    """A failover lost acknowledged entries; the next append went on after the hole, and the
    stored answer had a gap (the cluster chaos run of a fresh-clone CI run)."""
    rid, writer = await written_then_lost(redis, keys, running, "one ", "two ")
    writer.delta("three")
    await writer.flush()
    kinds, text = await as_read(redis, keys, rid)
    assert kinds == ["start", "delta", "failover", "delta", "delta", "delta"]
    assert text == "one two three"
    writer.delta(" four")  # and it goes on after the replay
    assert await writer.final(DONE) is Final.WRITTEN
    assert (await as_read(redis, keys, rid))[1] == "one two three four"


async def test_entries_lost_just_before_the_final_are_replayed_before_it(
    redis: Redis, keys: Keys, running: Producer
) -> None:
    rid, writer = await written_then_lost(redis, keys, running, "one ", "two")
    assert await writer.final(DONE) is Final.WRITTEN
    kinds, text = await as_read(redis, keys, rid)
    assert kinds == ["start", "delta", "failover", "delta", "delta", "done"]
    assert text == "one two"


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


async def written_apart(redis: Redis, keys: Keys, producer: Producer, answers: int) -> list[str]:
    """The entries of one of ``answers`` open requests that got "a", then "b" once the round
    after "a" could have taken it (one more round trip), then "c"."""
    rids = [await opened(redis, keys) for _ in range(answers)]
    writer, *_ = [await producer.writer(rid) for rid in rids]
    writer.delta("a")
    await writer.flush()
    writer.delta("b")
    await redis.ping()  # the flusher woke meanwhile: unheld, it took "b" alone
    writer.delta("c")
    await writer.flush()
    return await deltas(redis, keys, rids[0])


async def test_a_process_streaming_many_answers_holds_its_rounds_and_tokens_merge(
    redis: Redis, keys: Keys
) -> None:
    hold = Hold(most_s=0.5, from_writers=2)  # the whole hold from 4 answers
    async with flushing(Producer(redis, keys, hold=hold)) as producer:
        assert await written_apart(redis, keys, producer, answers=4) == ["a", "bc"]


async def test_a_process_streaming_few_answers_sends_each_token_as_it_comes(
    redis: Redis, keys: Keys
) -> None:
    hold = Hold(most_s=0.5, from_writers=2)
    async with flushing(Producer(redis, keys, hold=hold)) as producer:
        assert await written_apart(redis, keys, producer, answers=2) == ["a", "b", "c"]


def test_the_hold_grows_from_its_threshold_to_twice_as_many_answers() -> None:
    hold = Hold(most_s=0.05, from_writers=100)
    assert [hold.seconds(n) for n in (0, 100, 150, 200, 1000)] == [0.0, 0.0, 0.025, 0.05, 0.05]


async def test_closed_writers_leave_the_count_that_sets_the_hold(redis: Redis, keys: Keys) -> None:
    producer = Producer(redis, keys, hold=Hold(most_s=0.5, from_writers=1))
    writers = [await producer.writer(await opened(redis, keys)) for _ in range(2)]
    assert producer.flusher.hold_s() == 0.5
    writers[0].close()
    writers[0].close()
    assert producer.flusher.writers == 1
    assert producer.flusher.hold_s() == 0.0


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


@pytest.mark.cluster
async def test_text_utf8_cannot_carry_holds_up_no_other_answer(
    running: Producer, redis: Redis, keys: Keys
) -> None:
    """Half a surrogate pair in a delta failed the whole append round, and the flusher sent
    the round again forever: each answer batched with it stalled. It is stored as U+FFFD."""
    bad, good = await opened(redis, keys), await opened(redis, keys)
    bad_writer, good_writer = await running.writer(bad), await running.writer(good)
    bad_writer.delta("a\ud800b")
    good_writer.delta("fine")
    async with asyncio.timeout(10):
        await asyncio.gather(bad_writer.flush(), good_writer.flush())
    assert await deltas(redis, keys, good) == ["fine"]
    assert await deltas(redis, keys, bad) == ["a\ufffdb"]


class PackingBug(RequestStreams):
    """Packing the batches of request ``bad`` raises, as a bug in the packing code would."""

    bad = ""

    async def append_many(
        self, batches: Sequence[Batch], own: resp.OwnConnection | None = None
    ) -> list[Appended | Exception]:
        if any(batch.request_id == self.bad for batch in batches):
            raise TypeError("a bug while packing")
        return await super().append_many(batches, own)


async def fails_alone(bad: EventWriter, good: EventWriter) -> None:
    """Text buffered by both in one round: ``good``'s is stored, ``bad``'s is given up."""
    bad.delta("lost")
    good.delta("fine")
    async with asyncio.timeout(10):
        await good.flush()
        with pytest.raises(WriteFailed):
            await bad.flush()


async def stored(redis: Redis, keys: Keys, rid: str) -> list[tuple[str, dict[str, object]]]:
    return [(f["type"], json.loads(f["data"])) for _, f in await redis.xrange(keys.events(rid))]


@pytest.mark.cluster
async def test_a_batch_that_keeps_failing_ends_its_answer_and_holds_up_no_other(
    redis: Redis, keys: Keys, buggy: tuple[Producer, PackingBug]
) -> None:
    """The flusher took any failed round for Redis being away and sent it again forever: a
    bug in one request's batch stalled every answer batched with it, and the worker."""
    producer, streams = buggy
    bad, good = await opened(redis, keys), await opened(redis, keys)
    streams.bad = bad
    bad_writer, good_writer = await producer.writer(bad), await producer.writer(good)
    await fails_alone(bad_writer, good_writer)
    async with asyncio.timeout(10):
        with pytest.raises(WriteFailed):  # the producer stops at its next piece
            bad_writer.delta("more")
        streams.bad = ""  # the final goes by another path; it may be written
        assert await bad_writer.final(DONE) is Final.WRITTEN
        good_writer.delta(" still")
        assert await good_writer.final(DONE) is Final.WRITTEN
    [_start, (kind, error)] = await stored(redis, keys, bad)
    assert (kind, error["code"], error["partial"]) == ("error", "internal_error", False)
    assert await deltas(redis, keys, good) == ["fine", " still"]


@pytest.mark.cluster
async def test_an_error_reply_for_one_request_ends_that_answer_only(
    redis: Redis, keys: Keys, running: Producer
) -> None:
    """Its keys broken (here: its stream is not a stream), one request's append answers an
    error every time; it was sent again forever and its producer never heard of it."""
    bad, good = await opened(redis, keys), await opened(redis, keys)
    bad_writer, good_writer = await running.writer(bad), await running.writer(good)
    await redis.delete(keys.events(bad))
    await redis.set(keys.events(bad), "not a stream")
    await fails_alone(bad_writer, good_writer)
    assert await deltas(redis, keys, good) == ["fine"]


async def test_text_given_up_is_not_brought_back_by_a_replay(
    redis: Redis, keys: Keys, buggy: tuple[Producer, PackingBug]
) -> None:
    """A replay (Redis lost entries) sent every entry taken, the one given up too."""
    producer, streams = buggy
    rid = await opened(redis, keys)
    writer = await producer.writer(rid)
    writer.delta("kept ")
    await writer.flush()
    streams.bad = rid
    writer.delta("given up")
    async with asyncio.timeout(10):
        with pytest.raises(WriteFailed):
            await writer.flush()
        streams.bad = ""
        await lose_the_last_entry(redis, keys, rid)  # the final finds entries lost
        assert await writer.final(DONE) is Final.WRITTEN
    kinds, text = await as_read(redis, keys, rid)
    assert kinds == ["start", "failover", "delta", "error"]
    assert text == "kept "


@pytest.mark.parametrize(
    ("error", "away"),
    [
        (RedisConnectionError("gone"), True),
        (TimeoutError(), True),
        (ReadOnlyError("a replica now"), True),
        (ResponseError("BUSY Redis is busy running a script"), True),
        (ClusterCrossSlotError(), False),
        (ResponseError("WRONGTYPE Operation against a key"), False),
        (TypeError("a bug"), False),
    ],
)
def test_only_errors_that_say_redis_is_away_are_retried_without_end(
    error: Exception, away: bool
) -> None:
    assert redis_away(error) is away


class _Marks:
    """A flusher stand-in that only records which writers have something to send."""

    def join(self, writer: EventWriter) -> None:
        pass

    def mark(self, writer: EventWriter) -> None:
        pass


@pytest.mark.parametrize("stamp", [False, True])
@pytest.mark.parametrize("text", [' "quoted" \\ \n\t\x00\x1f', "é🎵\u2028", "plain"])
def test_a_text_delta_is_the_json_a_json_encoder_writes(text: str, stamp: bool) -> None:
    writer = EventWriter(
        _Marks(),  # type: ignore[arg-type]
        "r-1",
        "fence",
        on_cancel=lambda: None,
        on_refused=lambda why: None,
        restart=RESTART,
        stamp=stamp,
    )
    writer.delta(text)
    batch = writer.take_batch()
    assert batch is not None
    [(kind, data)] = batch.entries
    payload = json.loads(data)
    expected = {"delta": text, "t": payload["t"]} if stamp else {"delta": text}
    assert kind == "delta"
    assert data == json.dumps(expected, ensure_ascii=False, separators=(",", ":"))

"""Telemetry publishing: a Redis that is away for a while (a cluster failover) loses nothing."""

from __future__ import annotations

import contextlib
import random
import statistics
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ReadOnlyError, ResponseError

from deploy.local.servers import RedisClusterServers
from echotune.common.messages import TelemetryEvent
from echotune.common.redis import create_broker, create_redis
from echotune.worker import telemetry
from echotune.worker.telemetry import TelemetryPublisher, percentile
from tests.support.replicas import Pair, held_back, paused
from tests.support.telemetry import make_event


class Publish:
    """Stands in for the publishing script: its calls, then the real one or ``replies``."""

    def __init__(self, *replies: list[Any] | Exception) -> None:
        self.replies: list[list[Any] | Exception] = list(replies)
        self.calls: list[list[Any]] = []
        self.real = telemetry._PUBLISH

    async def __call__(self, redis: Redis, keys: list[str], args: list[Any]) -> Any:
        self.calls.append(args)
        if not self.replies:
            return await self.real(redis, keys, args)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def datas(args: list[Any]) -> list[bytes]:
    """The ``__data__`` of every entry of one call's arguments."""
    found, a = [], 1
    while a < len(args):
        n = args[a]
        fields = dict(zip(args[a + 1 : a + 1 + n : 2], args[a + 2 : a + 1 + n : 2], strict=True))
        found.append(fields["__data__"])
        a += n + 1
    return found


@pytest.mark.single_node(reason="reads the stream with a plain client")
async def test_an_event_is_published_once_redis_is_back(
    redis: Redis, redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was given up at the first failure (the client's own retries last about a second;
    a failover takes the node timeout plus an election): the attempt had no document."""
    away = ConnectionError("slot not served: its primary fails over")
    publish = Publish(away, away, away)
    monkeypatch.setattr(telemetry, "_PUBLISH", publish)
    monkeypatch.setattr(telemetry, "PAUSE_S", 0.01)
    stream = f"t{uuid.uuid4().hex[:8]}:telemetry"
    async with connected(redis_server_url) as broker:
        publisher = TelemetryPublisher(broker, redis, stream, 1000)
        event = make_event("p", random.Random(1))
        publisher.publish(event)
        await publisher.flush(timeout_s=30)
        assert await published(broker, redis_server_url, stream) == [event.event_id]
    assert len(publish.calls) == 4


@pytest.mark.single_node(reason="reads the stream with a plain client")
async def test_events_published_together_share_one_round_trip(
    redis: Redis, redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish = Publish()
    monkeypatch.setattr(telemetry, "_PUBLISH", publish)
    stream = f"t{uuid.uuid4().hex[:8]}:telemetry"
    events = [make_event("p", random.Random(seed)) for seed in range(5)]
    async with connected(redis_server_url) as broker:
        publisher = TelemetryPublisher(broker, redis, stream, 1000)
        for event in events:
            publisher.publish(event)
        await publisher.flush()
        assert await published(broker, redis_server_url, stream) == [e.event_id for e in events]
    assert [len(datas(args)) for args in publish.calls] == [5]


@pytest.mark.single_node(reason="a broker of one Redis")
async def test_an_entry_refused_while_redis_is_away_is_sent_again_one_refused_for_good_not(
    redis: Redis, redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READONLY (a client still on a former primary) says Redis is away: the event goes in a
    later round; WRONGTYPE (a damaged key) would be refused every time: it is given up."""
    publish = Publish(
        [ReadOnlyError("You can't write against a read only replica."), "1-1", WRONGTYPE],
        ["1-2"],
    )
    monkeypatch.setattr(telemetry, "_PUBLISH", publish)
    monkeypatch.setattr(telemetry, "PAUSE_S", 0.01)
    async with connected(redis_server_url) as broker:
        events = [make_event("p", random.Random(seed)) for seed in range(3)]
        publisher = TelemetryPublisher(broker, redis, "t:telemetry", 1000)
        for event in events:
            publisher.publish(event)
        await publisher.flush(timeout_s=10)
        rounds = [[event_id(broker, data) for data in datas(args)] for args in publish.calls]
    ids = [event.event_id for event in events]
    assert rounds == [ids, ids[:1]]


async def test_the_script_answers_each_entry_s_error_in_its_place(redis: Redis) -> None:
    """``pcall``: an entry refused is an error reply among the others, not the call's error
    (WRONGTYPE here: a damaged key refuses them all)."""
    stream = f"t{uuid.uuid4().hex[:8]}:telemetry"
    await redis.set(stream, "not a stream")
    args = [10, 2, "__data__", "a", 2, "__data__", "b"]
    replies = await telemetry._PUBLISH(redis, [stream], args)
    assert [type(r) for r in replies] == [ResponseError, ResponseError]
    assert str(replies[0]).startswith("WRONGTYPE")


async def test_a_batch_counts_once_a_replica_holds_it(replica_pair: Pair) -> None:
    """With REDIS_WAIT_REPLICAS the batch waits for its replica (WAIT): the cluster chaos run
    lost an attempt's document when its primary was killed before the replica held it."""
    stream = f"t{uuid.uuid4().hex[:8]}:telemetry"
    async with connected(replica_pair.primary.url) as broker:
        unreplicated: list[None] = []
        publisher = TelemetryPublisher(
            broker, replica_pair.redis, stream, 1000, wait_replicas=1, wait_ms=3000,
            on_unreplicated=lambda: unreplicated.append(None),
        )  # fmt: skip
        with paused(replica_pair.replica):
            publisher.publish(make_event("p", random.Random(1)))
            flushing = await held_back(publisher.flush(), lambda: replica_pair.redis.exists(stream))
        await flushing
    assert await replica_pair.replica_redis.xlen(stream) == 1
    assert unreplicated == [], "counted once the replica held it, not when the wait ran out"


def event_id(broker: RedisBroker, data: bytes) -> str:
    """The id of the event a stream entry's data carries."""
    body, _ = broker.message_format.parse(data)
    return TelemetryEvent.model_validate_json(body).event_id


WRONGTYPE = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[RedisBroker]:
    broker = create_broker(url)  # as the worker's: connected
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


async def published(broker: RedisBroker, url: str, stream: str) -> list[str]:
    """The event ids of the entries of ``stream``, read as FastStream's subscriber reads them
    (its entries are binary: the fixture's client would decode them as text)."""
    async with Redis.from_url(url) as raw:
        entries = await raw.xrange(stream)
    return [event_id(broker, fields[b"__data__"]) for _, fields in entries]


@pytest.mark.parametrize("seed", range(40))
def test_percentile_is_the_inclusive_quantile(seed: int) -> None:
    """As statistics.quantiles gives it (the gaps' p50/p95 in every attempt's telemetry)."""
    rng = random.Random(seed)
    values = [rng.choice([rng.uniform(0, 1e6), 20.0]) for _ in range(rng.randint(1, 300))]
    for q in (0.01, 0.5, 0.95, 0.99):
        if len(values) == 1:
            expected = values[0]
        else:
            expected = statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
        assert percentile(values, q) == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert percentile([], 0.5) is None


@pytest.mark.cluster
async def test_on_a_cluster_a_batch_waits_for_the_replica_of_its_stream_s_primary(
    redis_cluster: RedisClusterServers,
) -> None:
    """A cluster's broker cannot publish into a pipeline: a stand-in formats the entries, and
    the script and its ``WAIT`` go to the stream's primary."""
    cluster_redis = create_redis(redis_cluster.url)
    stream = f"t{uuid.uuid4().hex[:8]}:telemetry"
    try:
        publisher = TelemetryPublisher(
            create_broker(redis_cluster.url), cluster_redis, stream, 1000, wait_replicas=1,
            wait_ms=1500,
        )  # fmt: skip
        replica = redis_cluster.replica_of(redis_cluster.primary_of(stream))
        event = make_event("p", random.Random(1))
        with paused(replica):
            publisher.publish(event)
            flushing = await held_back(publisher.flush(), lambda: cluster_redis.exists(stream))
        await flushing
        [(_, fields)] = await cluster_redis.xrange(stream)
        assert event.event_id in fields["__data__"]
    finally:
        await cluster_redis.aclose()

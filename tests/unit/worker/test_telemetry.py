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

from echotune.common.messages import TelemetryEvent
from echotune.common.redis import create_broker
from echotune.common.scripts import execute
from echotune.worker import telemetry
from echotune.worker.telemetry import TelemetryPublisher, percentile
from tests.support.telemetry import make_event


@pytest.mark.single_node(reason="a cluster publishes each event, with no pipeline")
async def test_an_event_is_published_once_redis_is_back(
    redis: Redis, redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was given up at the first failure (the client's own retries last about a second;
    a failover takes the node timeout plus an election): the attempt had no document."""
    failures = 3

    async def away_for_a_while(*args: Any) -> list[Any]:
        nonlocal failures
        if failures > 0:
            failures -= 1
            raise ConnectionError("slot not served: its primary fails over")
        return await execute(*args)

    monkeypatch.setattr(telemetry, "execute", away_for_a_while)
    monkeypatch.setattr(telemetry, "PAUSE_S", 0.01)
    stream = f"t{uuid.uuid4().hex[:8]}:telemetry"
    async with connected(redis_server_url) as broker:
        publisher = TelemetryPublisher(broker, redis, stream, 1000)
        event = make_event("p", random.Random(1))
        publisher.publish(event)
        await publisher.flush(timeout_s=30)
        assert await published(broker, redis_server_url, stream) == [event.event_id]
    assert failures == 0


@pytest.mark.single_node(reason="a cluster publishes each event, with no pipeline")
async def test_events_published_together_share_one_round_trip(
    redis: Redis, redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[int] = []

    async def counted(redis: Redis, pipe: Any, scripts: list[Any]) -> list[Any]:
        rounds.append(len(scripts))
        return await execute(redis, pipe, scripts)

    monkeypatch.setattr(telemetry, "execute", counted)
    stream = f"t{uuid.uuid4().hex[:8]}:telemetry"
    events = [make_event("p", random.Random(seed)) for seed in range(5)]
    async with connected(redis_server_url) as broker:
        publisher = TelemetryPublisher(broker, redis, stream, 1000)
        for event in events:
            publisher.publish(event)
        await publisher.flush()
        assert await published(broker, redis_server_url, stream) == [e.event_id for e in events]
    assert rounds == [5]


@pytest.mark.single_node(reason="a cluster publishes each event, with no pipeline")
async def test_an_entry_refused_while_redis_is_away_is_sent_again_one_refused_for_good_not(
    redis: Redis, redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READONLY (a client still on a former primary) says Redis is away: the event goes in a
    later round; WRONGTYPE (a damaged key) would be refused every time: it is given up."""
    rounds: list[list[str]] = []
    replies = [
        [ReadOnlyError("You can't write against a read only replica."), "1-1", WRONGTYPE],
        ["1-2"],
    ]
    async with connected(redis_server_url) as broker:

        async def refusing(redis: Redis, pipe: Any, scripts: list[Any]) -> list[Any]:
            datas = [args[args.index("__data__") + 1] for args, _ in pipe.command_stack]
            rounds.append([event_id(broker, data) for data in datas])
            return replies[len(rounds) - 1]

        monkeypatch.setattr(telemetry, "execute", refusing)
        monkeypatch.setattr(telemetry, "PAUSE_S", 0.01)
        events = [make_event("p", random.Random(seed)) for seed in range(3)]
        publisher = TelemetryPublisher(broker, redis, "t:telemetry", 1000)
        for event in events:
            publisher.publish(event)
        await publisher.flush(timeout_s=10)
    ids = [event.event_id for event in events]
    assert rounds == [ids, ids[:1]]


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

"""A delivered batch's dead letters and acknowledgement, against a real Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from echotune.common.keys import TELEMETRY_GROUP
from echotune.common.redis import create_redis
from echotune.telemetry.consumer import _DEAD_LETTER_AND_ACK, BatchConsumer
from echotune.telemetry.metrics import Metrics
from echotune.telemetry.settings import TelemetrySettings
from echotune.telemetry.writer import WriteResult
from tests.support.flaky_proxy import reply_dropping_proxy


class NoMongo:
    """A writer that is never given an event (every one in these batches is dead)."""

    async def write(self, events: list[Any], batch: Any, **_: object) -> WriteResult:
        assert not events
        return WriteResult()


def as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


@pytest.mark.single_node(reason="a proxy in front of the one Redis")
async def test_a_dead_letter_whose_ack_reply_was_lost_is_written_once(
    redis_server_url: str, redis: Redis
) -> None:
    """redis-py sent the MULTI/EXEC again: every dead letter of the batch was written twice."""
    settings = TelemetrySettings(redis_url=redis_server_url, namespace=f"t{uuid.uuid4().hex[:10]}")
    keys = settings.keys
    await redis.xgroup_create(keys.telemetry, TELEMETRY_GROUP, id="0", mkstream=True)
    for n in range(2):
        await redis.xadd(keys.telemetry, {"v": "1", "data": f"not json {n}"})
    [(_, items)] = await redis.xreadgroup(TELEMETRY_GROUP, "c1", {keys.telemetry: ">"})
    ids = [as_bytes(entry_id) for entry_id, _ in items]
    entries = [{as_bytes(k): as_bytes(v) for k, v in fields.items()} for _, fields in items]
    metrics = Metrics(keys.telemetry, TELEMETRY_GROUP, keys.telemetry_dead_letters)
    await redis.script_load(_DEAD_LETTER_AND_ACK.source)  # the dropped call is then applied
    async with reply_dropping_proxy(redis_server_url) as proxy:
        client = create_redis(proxy.url)
        consumer = BatchConsumer(settings, client, NoMongo(), metrics)  # type: ignore[arg-type]
        proxy.drop_next_reply(b"not json 1")
        await consumer.handle(ids, entries, "c1", False)
        await client.aclose()
    assert proxy.dropped == 1
    assert (await redis.xpending(keys.telemetry, TELEMETRY_GROUP))["pending"] == 0
    letters = await redis.xrange(keys.telemetry_dead_letters)
    assert sorted(fields["payload"] for _, fields in letters) == [
        '{"v": "1", "data": "not json 0"}',
        '{"v": "1", "data": "not json 1"}',
    ]


async def test_a_batch_of_any_size_is_acknowledged(redis_server_url: str, redis: Redis) -> None:
    """Past ~8,000 ids, one XACK of them all would fail in the script (Lua's unpack)."""
    settings = TelemetrySettings(redis_url=redis_server_url, namespace=f"t{uuid.uuid4().hex[:10]}")
    keys = settings.keys
    await redis.xgroup_create(keys.telemetry, TELEMETRY_GROUP, id="0", mkstream=True)
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(9000):
            pipe.xadd(keys.telemetry, {"v": "1", "data": f"not json {n}"})
        await pipe.execute()
    [(_, items)] = await redis.xreadgroup(TELEMETRY_GROUP, "c1", {keys.telemetry: ">"})
    ids = [as_bytes(entry_id) for entry_id, _ in items]
    entries = [{as_bytes(k): as_bytes(v) for k, v in fields.items()} for _, fields in items]
    metrics = Metrics(keys.telemetry, TELEMETRY_GROUP, keys.telemetry_dead_letters)
    consumer = BatchConsumer(settings, redis, NoMongo(), metrics)  # type: ignore[arg-type]
    await consumer.handle(ids, entries, "c1", False)
    assert (await redis.xpending(keys.telemetry, TELEMETRY_GROUP))["pending"] == 0
    assert await redis.xlen(keys.telemetry_dead_letters) == 9000

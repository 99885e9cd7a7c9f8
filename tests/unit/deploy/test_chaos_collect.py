"""The chaos run's read of the telemetry backlog."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from deploy.chaos.collect import telemetry_backlog
from echotune.common.keys import TELEMETRY_GROUP, Keys


async def test_undelivered_binary_entries_are_counted_not_decoded(
    redis_server_url: str, redis: Redis
) -> None:
    """Telemetry entries are binary FastStream messages: reading them with a decoding client
    failed the whole chaos run whenever one was still undelivered."""
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    await redis.xadd(keys.telemetry, {"data": "delivered"})
    await redis.xgroup_create(keys.telemetry, TELEMETRY_GROUP, id="$")
    raw = Redis.from_url(redis_server_url)  # bytes, as FastStream writes them
    await raw.xadd(keys.telemetry, {b"data": b"\x89\xff binary"})
    await raw.aclose()
    assert await telemetry_backlog(redis, keys) == (2, 1, 0)

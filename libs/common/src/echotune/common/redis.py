"""Redis client factory used in service lifespans."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, ResponseError, TimeoutError


def retry_options() -> dict[str, Any]:
    """Connection options that retry a command on a fresh connection (FastStream brokers too)."""
    return {
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=4),
        "retry_on_error": [ConnectionError, TimeoutError],
    }


def create_redis(
    url: str,
    *,
    max_connections: int = 64,
    timeout: float = 10.0,
    socket_timeout: float | None = 5.0,
) -> Redis:
    """A client whose pool waits (``timeout``) for a free connection instead of failing.

    ``socket_timeout`` must exceed the longest blocking command sent through the client.
    Commands (pipelines too) are retried on a fresh connection after a connection error,
    so a restarted Redis is picked up without a failed request; a write whose reply was
    lost may then be applied twice (a rare duplicate, never a loss).
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=socket_timeout,
        decode_responses=True,
        **retry_options(),
    )
    return Redis(connection_pool=pool)


async def ensure_group(redis: Redis, stream: str, group: str) -> bool:
    """Create ``group`` on ``stream`` at id ``0`` (``MKSTREAM``) unless it exists; whether it
    was created now. At ``0``, entries written before any consumer started are delivered too
    (FastStream would create a missing group at ``$`` and skip them)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True

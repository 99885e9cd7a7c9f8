"""Redis client factory used in service lifespans."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def create_redis(
    url: str,
    *,
    max_connections: int = 64,
    timeout: float = 10.0,
    socket_timeout: float | None = 5.0,
) -> Redis:
    """A client whose pool waits (``timeout``) for a free connection instead of failing.

    ``socket_timeout`` must exceed the longest blocking command sent through the client.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=socket_timeout,
        decode_responses=True,
    )
    return Redis(connection_pool=pool)

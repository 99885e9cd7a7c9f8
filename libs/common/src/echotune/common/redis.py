"""Redis client factory used in service lifespans."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def create_redis(url: str, *, max_connections: int = 64, timeout: float = 10.0) -> Redis:
    """A client whose pool waits for a free connection instead of failing when exhausted."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, decode_responses=True
    )
    return Redis(connection_pool=pool)

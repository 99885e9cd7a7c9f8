"""The quick waiting pool: free connections reused, waiters woken, dead ones replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from echotune.common.redis import create_redis
from echotune.common.redis_pool import QuickPool
from tests.support.waiting import until

pytestmark = pytest.mark.single_node(reason="a pool of one server's connections")


@pytest.fixture
async def small(redis_server_url: str) -> AsyncIterator[Redis]:
    """A client of two connections (a command waits up to 10 s for one)."""
    client = create_redis(redis_server_url, max_connections=2)
    assert isinstance(client.connection_pool, QuickPool)
    yield client
    await client.aclose()


def counts(client: Redis) -> tuple[int, int]:
    pool = client.connection_pool
    assert isinstance(pool, QuickPool)
    return len(pool._available_connections), len(pool._in_use_connections)


async def test_a_free_connection_is_reused_and_given_back(small: Redis) -> None:
    await small.set("quick:k", "v")
    assert counts(small) == (1, 0)
    for _ in range(5):
        assert await small.get("quick:k") == "v"
    assert counts(small) == (1, 0)


async def test_more_commands_than_connections_all_complete(small: Redis) -> None:
    """Those waiting for a connection are woken as the others give theirs back."""
    replies = await asyncio.wait_for(
        asyncio.gather(*(small.incr("quick:n") for _ in range(50))), 10
    )
    assert sorted(replies) == list(range(1, 51))
    assert counts(small) == (2, 0)


async def test_a_connection_the_server_closed_is_replaced(small: Redis) -> None:
    await small.ping()
    (connection,) = small.connection_pool._available_connections  # type: ignore[attr-defined]
    await small.client_kill_filter(_id=await small.client_id(), skipme=False)
    assert await small.ping()
    assert counts(small) == (1, 0)
    assert connection.is_connected


async def test_a_free_connection_is_still_checked(
    small: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py checks a connection it hands out (connected, nothing unread): so does this."""
    await small.ping()
    pool = small.connection_pool
    checked: list[object] = []
    ensure = pool.ensure_connection

    async def counted(connection: Any) -> None:
        checked.append(connection)
        await ensure(connection)

    async def slow_path(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a free connection was taken through redis-py's own path")

    monkeypatch.setattr(pool, "ensure_connection", counted)
    monkeypatch.setattr(BlockingConnectionPool, "get_connection", slow_path)
    await small.ping()
    assert checked == pool._available_connections  # type: ignore[attr-defined]


async def test_an_exhausted_pool_still_waits_then_fails(redis_server_url: str) -> None:
    client = create_redis(redis_server_url, max_connections=1, timeout=0.2)
    pool = client.connection_pool
    try:
        held = await pool.get_connection()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.ping()
        await pool.release(held)
        assert await client.ping()
        assert counts(client) == (1, 0)
    finally:
        await client.aclose()


async def test_a_waiter_gets_the_connection_given_back(small: Redis) -> None:
    pool = small.connection_pool
    held = [await pool.get_connection(), await pool.get_connection()]
    waiting = asyncio.create_task(small.ping())

    async def registered() -> bool:
        return bool(pool._condition._waiters)  # type: ignore[attr-defined]

    await until(registered, "the ping waits for a connection")
    await pool.release(held.pop())
    assert await asyncio.wait_for(waiting, 5)
    await pool.release(held.pop())
    assert counts(small) == (2, 0)

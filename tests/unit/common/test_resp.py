"""Commands packed by hand: replies in order, errors in place, NOSCRIPT reloaded, reconnected."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from echotune.common import resp
from echotune.common.redis import create_redis
from echotune.common.scripts import Script, execute_packed

pytestmark = pytest.mark.single_node(reason="packed commands are not routed by slot")


def test_commands_are_packed_as_resp() -> None:
    assert resp.command("SET", "k", 1.5) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n"
    assert resp.bulk("é") == b"$2\r\n\xc3\xa9\r\n"


async def test_an_error_reply_is_returned_in_place_and_the_next_replies_follow(
    redis: Redis,
) -> None:
    key = f"t:{uuid.uuid4().hex}"
    packed = resp.command("SET", key, "v") + resp.command("INCR", key) + resp.command("GET", key)
    ok, error, value = await resp.send(redis, packed, 3)
    assert ok in (b"OK", "OK", True)
    assert isinstance(error, ResponseError)
    assert value in (b"v", "v")


async def test_a_script_redis_does_not_know_is_loaded_and_run_once(redis: Redis) -> None:
    incr = Script(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    keys = [f"t:{uuid.uuid4().hex}" for _ in range(3)]
    calls = [([key], [n + 1]) for n, key in enumerate(keys)]
    assert await execute_packed(redis, incr, calls) == [1, 2, 3]  # each after NOSCRIPT
    assert await execute_packed(redis, incr, calls) == [2, 4, 6]


async def test_a_connection_the_server_closed_is_replaced(
    redis: Redis, redis_server_url: str
) -> None:
    client = create_redis(redis_server_url, max_connections=1)
    try:
        (client_id,) = await resp.send(client, resp.command("CLIENT", "ID"), 1)
        assert await redis.execute_command("CLIENT", "KILL", "ID", client_id) == 1
        (pong,) = await resp.send(client, resp.command("PING"), 1)
        assert pong in (b"PONG", "PONG", True)
        (second_id,) = await resp.send(client, resp.command("CLIENT", "ID"), 1)
        assert second_id != client_id
    finally:
        await client.aclose()


async def test_a_reply_that_never_comes_is_redis_pys_timeout(redis_server_url: str) -> None:
    """A RedisError (what callers catch), retried as the client's policy says, then raised."""
    client = create_redis(redis_server_url, max_connections=1, socket_timeout=0.05)
    try:
        key = f"t:{uuid.uuid4().hex}"
        with pytest.raises(RedisTimeoutError):
            await resp.send(client, resp.command("BLPOP", key, 1), 1)
        (pong,) = await resp.send(client, resp.command("PING"), 1)  # a fresh connection
        assert pong in (b"PONG", "PONG", True)
    finally:
        await client.aclose()

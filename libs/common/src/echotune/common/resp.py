"""Redis commands packed by hand and sent on a pool connection or one's own, for the
per-token paths.

redis-py packs each argument in Python and passes each reply through its callbacks; on a
path that runs for every relayed token that costs more than the command itself (issue 15).
Single-node Redis only (a cluster client routes commands by slot, these bytes are not routed),
except :func:`exchange` on a connection of the node the caller chose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from echotune.common.redis import ENCODING_ERRORS

Arg = str | bytes | int | float


def bulk(value: Arg) -> bytes:
    """``value`` as a RESP bulk string (text UTF-8 cannot carry, such as half a surrogate
    pair, as U+FFFD, as the clients' ``encoding_errors``: so that it fails no round)."""
    if isinstance(value, bytes):
        raw = value
    else:
        text = str(value)
        try:
            raw = text.encode()
        except UnicodeEncodeError:  # rare: naming the handler up front costs 40 % per call
            raw = text.encode("utf-8", ENCODING_ERRORS)
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def command(*args: Arg) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n%s" % (len(args), b"".join([bulk(a) for a in args]))


async def send(redis: Redis, packed: bytes, replies: int) -> list[Any]:
    """Send ``packed`` (``replies`` commands) on one pool connection, again on a fresh one as
    the client's retry policy says; the replies as hiredis parsed them, an error reply in its
    place as a ``ResponseError``. Only for commands that may be applied twice."""
    async with pooled(redis) as connection:
        return await _exchange(connection, packed, replies)


@asynccontextmanager
async def pooled(redis: Redis) -> AsyncIterator[AbstractConnection]:
    """One of ``redis``'s pool connections, held for several exchanges."""
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        yield connection
    finally:
        await pool.release(connection)


async def exchange(
    connection: AbstractConnection, packed: bytes, replies: int, *, retry: bool = True
) -> list[Any]:
    """As :func:`send`, on a connection the caller holds (a cluster node's, a pooled one);
    not ``retry``: never again on a fresh connection (a ``WAIT`` waits for its own)."""
    return await _exchange(connection, packed, replies, retry=retry)


class OwnConnection:
    """A connection of ``redis``'s kind kept by one caller that sends one command at a time
    (the worker's flusher, the gateway's relay): its round trips skip the pool's lock, timer
    and bookkeeping, which cost as much as packing the command. Close it with :meth:`aclose`."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._connection: AbstractConnection | None = None
        self._closed = False

    async def send(self, packed: bytes, replies: int, *, retry: bool = True) -> list[Any]:
        """As :func:`send`; calls must not overlap; not ``retry``: as :func:`exchange`."""
        if self._closed:
            raise RedisConnectionError("this connection was closed")
        if self._connection is None:
            self._connection = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        return await _exchange(self._connection, packed, replies, retry=retry)

    async def aclose(self) -> None:
        self._closed = True
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None


async def _exchange(
    connection: AbstractConnection, packed: bytes, replies: int, *, retry: bool = True
) -> list[Any]:
    async def exchange() -> list[Any]:
        await connection.send_packed_command(packed, check_health=False)
        # One timeout for all the replies, not one per reply as connection.read_response;
        # the parser leaves an error reply in place. Failures become redis-py's own errors,
        # as read_response makes them: those are what the retry policy retries.
        try:
            async with asyncio.timeout(connection.socket_timeout):
                parser: Any = connection._parser  # hiredis' or redis-py's: both read one reply
                return [await parser.read_response() for _ in range(replies)]
        except TimeoutError as error:
            raise RedisTimeoutError("Timeout reading from Redis") from error
        except OSError as error:
            raise RedisConnectionError(f"Error reading from Redis: {error!r}") from error

    async def failed(_: BaseException) -> None:
        await connection.disconnect()

    try:
        if not retry:
            if not connection.is_connected:  # sending would connect anew, losing the writes
                raise RedisConnectionError("the connection was closed")
            return await exchange()
        return await connection.retry.call_with_retry(exchange, failed)
    except BaseException:
        await connection.disconnect()  # replies may be left unread on it
        raise

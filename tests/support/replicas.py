"""A primary with a replica, to prove writes and reads wait for what a replica holds."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from deploy.local.servers import RedisServer, redis_binary, valkey_binary
from echotune.common.redis import create_redis

BLOCKED_S = 0.3
"""How long a write must stay unanswered while its replica is stopped (it waits up to 3 s)."""
SERVERS = {"redis": redis_binary(), "valkey": valkey_binary()}


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """SIGSTOP ``server`` (a replica: it acknowledges nothing) until the block ends."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


class Pair:
    """A primary and its replica, each with a client."""

    def __init__(self, tmp_path: Path, binary: str) -> None:
        (tmp_path / "p").mkdir()
        (tmp_path / "r").mkdir()
        sync_now = ["--repl-diskless-sync-delay", "0"]  # not 5 s: a replica in sync at once
        self.primary = RedisServer(str(tmp_path / "p"), extra_args=sync_now, binary=binary)
        follow = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica = RedisServer(str(tmp_path / "r"), extra_args=follow, binary=binary)
        self.redis = create_redis(self.primary.url)
        self.replica_redis = create_redis(self.replica.url)

    async def start(self) -> None:
        self.primary.start()
        self.replica.start()
        async with asyncio.timeout(30):
            while (await self.replica_redis.info("replication"))["master_link_status"] != "up":  # noqa: ASYNC110 - Redis pushes no signal
                await asyncio.sleep(0.05)

    async def replica_lag(self) -> None:
        """A write on a connection of its own that the (stopped) replica does not hold."""
        other = create_redis(self.primary.url)
        try:
            await other.set(f"lag-{uuid.uuid4().hex}", 1)
        finally:
            await other.aclose()

    async def close(self) -> None:
        await self.redis.aclose()
        await self.replica_redis.aclose()
        self.replica.stop()
        self.primary.stop()


@pytest.fixture(params=[name for name, binary in SERVERS.items() if binary])
async def replica_pair(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """A running primary and replica, of Redis and of Valkey (as installed)."""
    pair = Pair(tmp_path, SERVERS[request.param] or "")
    try:
        await pair.start()
        yield pair
    finally:
        await pair.close()


async def held_back(
    write: Awaitable[Any], stored: Callable[[], Awaitable[Any]]
) -> asyncio.Task[Any]:
    """Start ``write``; once ``stored`` says the primary holds it, check it stays unanswered."""
    task = asyncio.ensure_future(write)
    async with asyncio.timeout(10):
        while not await stored():  # noqa: ASYNC110 - Redis pushes no signal
            await asyncio.sleep(0.01)
    done, _ = await asyncio.wait({task}, timeout=BLOCKED_S)
    assert not done, "the write counted before any replica held it"
    return task

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

from deploy.local.servers import RedisServer, free_port, redis_binary, valkey_binary
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
    """A primary and its replica, each with a client; with ``delay_s``, the replica follows
    through a proxy that delays every byte that long each way (a replica online, lagging)."""

    def __init__(self, tmp_path: Path, binary: str, delay_s: float = 0.0) -> None:
        (tmp_path / "p").mkdir()
        (tmp_path / "r").mkdir()
        sync_now = ["--repl-diskless-sync-delay", "0"]  # not 5 s: a replica in sync at once
        self.primary = RedisServer(str(tmp_path / "p"), extra_args=sync_now, binary=binary)
        self.delay_s, self._proxy_port = delay_s, free_port()
        port = self._proxy_port if delay_s else self.primary.port
        follow = ["--replicaof", "127.0.0.1", str(port)]
        self.replica = RedisServer(str(tmp_path / "r"), extra_args=follow, binary=binary)
        self.redis = create_redis(self.primary.url)
        self.replica_redis = create_redis(self.replica.url)
        self._proxy: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.primary.start()
        if self.delay_s:
            self._proxy = await asyncio.start_server(self._relay, "127.0.0.1", self._proxy_port)
        await asyncio.to_thread(self.replica.start)  # the proxy serves meanwhile
        async with asyncio.timeout(30):
            while (await self.replica_redis.info("replication"))["master_link_status"] != "up":  # noqa: ASYNC110 - Redis pushes no signal
                await asyncio.sleep(0.05)
            while not (await self.redis.execute_command("ROLE"))[2]:  # noqa: ASYNC110 - Redis pushes no signal
                await asyncio.sleep(0.05)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await asyncio.open_connection("127.0.0.1", self.primary.port)
        for source, sink in ((reader, upstream[1]), (upstream[0], writer)):
            task = asyncio.ensure_future(_delayed(source, sink, self.delay_s))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

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
        await asyncio.to_thread(self.replica.stop)
        self.primary.stop()
        for task in list(self._pipes):
            task.cancel()
        if self._proxy is not None:
            self._proxy.close()


async def _delayed(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay_s: float
) -> None:
    """Copy ``source`` to ``sink``, each chunk ``delay_s`` after it came, in order."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await chunks.get()
            await asyncio.sleep(max(due - loop.time(), 0.0))
            sink.write(data)

    sending = asyncio.ensure_future(send())
    try:
        while data := await source.read(65536):
            chunks.put_nowait((loop.time() + delay_s, data))
    finally:
        sending.cancel()
        sink.close()


@pytest.fixture(params=[name for name, binary in SERVERS.items() if binary])
async def replica_pair(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """A running primary and replica, of Redis and of Valkey (as installed)."""
    pair = Pair(tmp_path, SERVERS[request.param] or "")
    try:
        await pair.start()
        yield pair
    finally:
        await pair.close()


LAG_S = 0.08
"""Each way between the lagging replica and its primary: its acknowledgements come in 160 ms,
past a 50 ms ``WAIT``, every time."""


@pytest.fixture(params=[name for name, binary in SERVERS.items() if binary])
async def lagging_pair(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """A primary and a replica online but always slower to confirm than a 50 ms wait."""
    pair = Pair(tmp_path, SERVERS[request.param] or "", delay_s=LAG_S)
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

"""A TCP proxy in front of Redis that can lose the reply of one command or stop taking what
clients send, as a network can."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class ReplyDroppingProxy:
    """Forwards bytes both ways; when armed, the next request containing ``marker`` reaches
    Redis (and is applied) but the client's connection is cut before the reply comes back;
    after :meth:`stop_reading`, nothing clients send is read any more (their sends block)."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._marker: bytes | None = None
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading = asyncio.Event()
        self._reading.set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    def drop_next_reply(self, marker: bytes) -> None:
        self._marker = marker

    def stop_reading(self) -> None:
        self._reading.clear()

    async def __aenter__(self) -> ReplyDroppingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        back = asyncio.create_task(_pump(upstream_reader, writer))
        try:
            while await self._reading.wait() and (data := await reader.read(65536)):
                upstream_writer.write(data)
                await upstream_writer.drain()
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    self.dropped += 1
                    back.cancel()
                    await asyncio.wait({back})  # its read must end before this one starts
                    await upstream_reader.read(65536)  # applied by Redis; the reply is lost
                    break
        finally:
            back.cancel()
            for w in (writer, upstream_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def reply_dropping_proxy(target_url: str) -> AsyncIterator[ReplyDroppingProxy]:
    async with ReplyDroppingProxy(target_url) as proxy:
        yield proxy

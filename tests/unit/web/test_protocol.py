"""A request uvicorn cannot parse gets the services' JSON error body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from echotune.web.protocol import HTTP


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[int]:
    """uvicorn with the services' ``--http`` on a free port (listening before it starts:
    connections wait for it), until the block ends."""
    app = FastAPI()

    @app.get("/")
    async def root(m: str = "") -> dict[str, int]:
        return {"length": len(m)}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = uvicorn.Config(app, http=HTTP, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def ask(port: int, target: bytes) -> tuple[bytes, bytes]:
    """The status line and body of ``GET target``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    reply = await reader.read()
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


async def test_a_url_over_64_kb_is_a_json_400() -> None:
    """It was ``400 Invalid HTTP request received.`` as text (new-user review), where every
    other error is JSON."""
    async with asyncio.timeout(10), serving() as port:
        status, body = await ask(port, b"/?m=" + b"a" * 70_000)
        assert status == b"HTTP/1.1 400 Bad Request"
        assert json.loads(body)["error"]["code"] == "invalid_http"
        status, body = await ask(port, b"/?m=" + b"a" * 60_000)  # long, still readable
        assert status == b"HTTP/1.1 200 OK"
        assert json.loads(body) == {"length": 60_000}

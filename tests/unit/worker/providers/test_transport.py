"""The lean HTTP/1.1 transport against a scripted TCP server: bodies, reuse, close, errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from echotune.worker.providers import transport
from echotune.worker.providers.base import make_client
from echotune.worker.providers.errors import classify
from echotune.worker.providers.transport import FREE_WAKES, LeanTransport

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    """Answers each request on a connection with the next scripted reply."""

    replies: list[Reply]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                self.requests.append(head + await reader.readexactly(length))
                await self.replies.pop(0)(reader, writer)
            await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()


@contextlib.asynccontextmanager
async def serve(*replies: Reply) -> AsyncIterator[Server]:
    server = Server(list(replies))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    async with listener:
        yield server


def chunked(*pieces: bytes, end: bool = True, pause: asyncio.Event | None = None) -> Reply:
    async def reply(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        if pause is not None:
            await pause.wait()
        if end:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    return reply


def fixed(status: int, body: bytes, extra: bytes = b"") -> Reply:
    async def reply(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)
        )
        await writer.drain()

    return reply


async def drain(response: httpx.Response, into: list[bytes] | None = None) -> None:
    async for chunk in response.aiter_bytes():
        if into is not None:
            into.append(chunk)


@pytest.fixture(params=["lean", "httpx"])
def kind(request: pytest.FixtureRequest) -> str:
    """Both transports behave the same to the providers (``ECHOTUNE_WORKER_HTTP_TRANSPORT``)."""
    return str(request.param)


def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    writer.transport.abort()
    return asyncio.sleep(0)


async def test_a_chunked_stream_arrives_whole_and_the_connection_is_reused(
    kind: str,
) -> None:
    replies = chunked(b"data: a\n\n", b"data: b\n\n"), fixed(200, b"{}")
    async with serve(*replies) as server, make_client(kind=kind) as client:
        async with client.stream("POST", server.url + "/v1/x?q=1", json={"k": 1}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            assert b"".join([c async for c in r.aiter_bytes()]) == b"data: a\n\ndata: b\n\n"
        second = await client.get(server.url + "/again")
    assert second.json() == {}
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
    assert first.endswith(b'\r\n\r\n{"k":1}')
    assert b"content-length: 7" in first.lower()


async def test_an_error_status_and_its_body_come_through(kind: str) -> None:
    reply = fixed(429, b'{"error":"slow down"}', b"retry-after: 3\r\n")
    async with serve(reply) as server, make_client(kind=kind) as client:
        response = await client.post(server.url, json={})
    assert (response.status_code, response.headers["retry-after"]) == (429, "3")
    assert response.json() == {"error": "slow down"}


async def test_closing_a_stream_early_closes_its_connection(kind: str) -> None:
    """A cancelled answer must reach the provider as a closed connection."""

    async def one_piece_then_wait(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await chunked(b"data: a\n\n", end=False)(reader, w)
        assert await reader.read() == b""  # the client hung up

    async with serve(one_piece_then_wait) as server, make_client(kind=kind) as client:
        async with client.stream("POST", server.url, json={}) as response:
            async for _ in response.aiter_bytes():
                break
        await asyncio.wait_for(server.closed.wait(), 5)


async def test_a_silent_server_is_a_read_timeout(kind: str) -> None:
    hold = asyncio.Event()
    reply = chunked(b"data: a\n\n", end=False, pause=hold)
    async with serve(reply) as server, make_client(kind=kind) as client:
        timeout = httpx.Timeout(5.0, read=0.2)
        async with client.stream("POST", server.url, json={}, timeout=timeout) as response:
            with pytest.raises(httpx.ReadTimeout) as caught:
                await drain(response)
        hold.set()
    assert classify(caught.value) == "timeout"


async def test_a_connection_lost_mid_body_is_a_disconnect(kind: str) -> None:
    received: list[bytes] = []
    async with serve(hang_up) as server, make_client(kind=kind) as client:
        response = await client.send(client.build_request("POST", server.url), stream=True)
        with pytest.raises(httpx.TransportError) as caught:
            await drain(response, received)
        await response.aclose()
    assert received == [b"hello"]
    assert classify(caught.value) == "disconnected"


async def test_a_refused_connection_is_a_connect_error(kind: str) -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with make_client(kind=kind) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.post(f"http://127.0.0.1:{port}/", json={})
    assert classify(caught.value) == "connect_error"


async def test_a_garbled_response_is_a_protocol_error(kind: str) -> None:
    async def garbage(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async with serve(garbage) as server, make_client(kind=kind) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, json={})


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    transport = LeanTransport()
    async with (
        serve(fixed(200, b"1", b"connection: close\r\n")) as first,
        serve(fixed(200, b"2")) as second,
        httpx.AsyncClient(transport=transport) as client,
    ):
        assert (await client.get(first.url)).text == "1"
        assert transport.idle_connections() == 0
        assert (await client.get(second.url)).text == "2"
        assert transport.idle_connections() == 1


def close_unanswered(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
    """Close the connection on a request, answering nothing (a keep-alive that ran out)."""
    writer.transport.abort()
    return asyncio.sleep(0)


async def test_a_kept_connection_closed_as_the_request_goes_out_is_replaced() -> None:
    """A chaos run counted a failed call (``disconnected``, 0.6 ms) that no upstream had
    recorded: the server closed the kept connection as the request went out (its keep-alive
    ran out). It is sent once more on a new connection."""
    async with (
        serve(fixed(200, b"1"), close_unanswered, fixed(200, b"2")) as server,
        httpx.AsyncClient(transport=LeanTransport()) as client,
    ):
        assert (await client.post(server.url, json={})).text == "1"
        assert (await client.post(server.url, json={})).text == "2"
    assert server.connections == 2
    assert len(server.requests) == 3


async def test_a_kept_connection_closed_later_is_the_call_s_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past a round trip's time the server was working on it: the worker's retries decide."""
    monkeypatch.setattr(transport, "KEEP_ALIVE_RACE_S", 0.05)

    async def close_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        await close_unanswered(reader, writer)

    await not_sent_again(close_later, httpx.RemoteProtocolError)


async def test_a_kept_connection_that_answered_in_part_is_not_sent_again() -> None:
    """Once a byte of the response came, the request reached the server: no second call."""

    def half(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-le")
        writer.transport.abort()
        return asyncio.sleep(0)

    await not_sent_again(half, httpx.TransportError)


async def not_sent_again(reply: Reply, error: type[Exception]) -> None:
    """A kept connection's second request meets ``reply``: the call fails with ``error``,
    and no new connection carries it again."""
    async with (
        serve(fixed(200, b"1"), reply, fixed(200, b"2")) as server,
        httpx.AsyncClient(transport=LeanTransport()) as client,
    ):
        assert (await client.post(server.url, json={})).text == "1"
        with pytest.raises(error):
            await client.post(server.url, json={})
    assert server.connections == 1


async def test_a_body_closed_unread_never_reaches_the_next_request(kind: str) -> None:
    """Review finding: a response closed after its body arrived, unread (a cancel after a
    short answer, a bounded error read), left that body queued for the connection's next
    request, maybe another user's."""
    replies = fixed(200, b"body-1"), fixed(200, b"body-2")
    async with serve(*replies) as server, make_client(kind=kind) as client:
        async with client.stream("POST", server.url, json={}) as response:
            await asyncio.sleep(0.05)  # the whole body is in, nobody reads it
            assert response.status_code == 200
        second = await client.post(server.url, json={})
    assert second.content == b"body-2"


async def test_a_shorter_read_timeout_on_a_reused_connection_holds(kind: str) -> None:
    """Review finding: the timer of an earlier, longer timeout was kept, not moved earlier."""
    hold = asyncio.Event()
    replies = fixed(200, b"1"), chunked(b"data: a\n\n", end=False, pause=hold)
    async with serve(*replies) as server, make_client(kind=kind) as client:
        first = await client.post(server.url, json={}, timeout=httpx.Timeout(5.0, read=30))
        assert first.content == b"1"
        started = asyncio.get_running_loop().time()
        timeout = httpx.Timeout(5.0, read=0.2)
        async with client.stream("POST", server.url, json={}, timeout=timeout) as response:
            with pytest.raises(httpx.ReadTimeout):
                await drain(response)
        assert asyncio.get_running_loop().time() - started < 5
        hold.set()
    assert server.connections == 1


async def test_an_interim_response_is_skipped(kind: str) -> None:
    async def early_hints(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        await fixed(200, b"ok")(_, writer)

    async with serve(early_hints) as server, make_client(kind=kind) as client:
        response = await client.post(server.url, json={})
    assert (response.status_code, response.content) == (200, b"ok")
    assert "link" not in response.headers


async def test_a_header_with_a_line_break_is_refused(kind: str) -> None:
    async with serve(fixed(200, b"")) as server, make_client(kind=kind) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.post(server.url, json={}, headers={"Authorization": "Bearer k\n"})
    assert server.requests == []


def piece(text: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(text), text)


async def paced_reads(
    pace: float, *, read_timeout: float | None = None, gap: float = 0.05
) -> list[bytes]:
    """What a reader paced by ``pace`` reads: ``FREE_WAKES`` pieces, each sent once the one
    before was read; then ``late`` and, ``gap`` seconds after it, ``later`` with the end."""
    got: list[bytes] = []
    read = asyncio.Event()

    async def reply(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for n in range(FREE_WAKES):
            writer.write(piece(b"f%d " % n))
            await read.wait()
            read.clear()
        writer.write(piece(b"late "))
        await asyncio.sleep(gap)
        writer.write(piece(b"later ") + b"0\r\n\r\n")

    transport = LeanTransport(pace=lambda: pace)
    timeout = httpx.Timeout(None, read=read_timeout)
    async with (
        serve(reply) as server,
        httpx.AsyncClient(transport=transport, timeout=timeout) as client,
        asyncio.timeout(10),
        client.stream("GET", server.url) as response,
    ):
        async for chunk in response.aiter_raw():
            got.append(chunk)
            read.set()
    return got


FREE = [b"f0 ", b"f1 ", b"f2 ", b"f3 "]


async def test_a_paced_reader_takes_what_came_meanwhile_in_one_read() -> None:
    """Busy, a reader is woken at most once per pace: the tokens that came meanwhile are read
    and parsed together (one entry downstream, issue 15). The first ``FREE_WAKES`` pieces
    (a provider's preamble, then the first token) and the end are never held; a review found
    OpenAI's first token, its second piece, held."""
    assert await paced_reads(60.0) == [*FREE, b"late later "]  # the end woke it at once
    assert await paced_reads(0.0) == [*FREE, b"late ", b"later "]  # idle: each as it comes


async def test_a_held_piece_is_read_when_its_pace_is_due_and_never_times_out() -> None:
    """The pace's own timer wakes the reader; bytes held past the read timeout are no
    timeout (a review reproduced ``ReadTimeout`` with the bytes waiting)."""
    for got in (
        await paced_reads(0.02, gap=0.05),  # due before ``later`` comes
        await paced_reads(0.2, read_timeout=0.1, gap=0.15),  # the timeout comes first
    ):
        assert got[: len(FREE)] == FREE
        assert b"".join(got[len(FREE) :]) == b"late later "

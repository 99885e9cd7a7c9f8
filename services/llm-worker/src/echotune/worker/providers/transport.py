"""A lean HTTP/1.1 transport for httpx: the providers' streamed calls at a fraction of the CPU.

httpx's default transport (httpcore + h11 on anyio) costs ~80 µs of CPU per streamed chunk
and ~6 ms per request at 50 open streams (a cancel scope and a checkpoint per read, h11 in
Python, and a pool whose bookkeeping is quadratic in its connections). This one parses with
``httptools`` (C, as uvicorn does) in an ``asyncio.Protocol`` and keeps idle connections per
origin. It is the transport of the workers' shared client; everything above it (requests,
responses, decoding, errors) is plain httpx. Proxies from the environment keep httpx's own.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httptools
import httpx

IDLE_EXPIRY_S = 5.0
"""An idle connection older than this is closed, not reused (servers drop them about then)."""
KEEP_ALIVE_RACE_S = 0.5
"""A kept connection closed this soon after a request went out, with no byte answered, was
closed by the server as its keep-alive ran out (within a round trip): the request goes once
more on a new connection. Later, the close is the call's failure (the worker's retries)."""
HIGH_WATER = 256 * 1024
"""Unread body bytes at which the socket stops being read."""
FREE_WAKES = 4
"""Wake-ups for body bytes never held by the pace: the first token comes after a provider's
preamble (OpenAI's role-only chunk; Anthropic's message and content-block starts)."""

Origin = tuple[str, str, int]
Pace = Callable[[], float]
"""The least time between two wake-ups of a response's reader now (0: each piece at once)."""
_UNSAFE = re.compile(rb"[\r\n\x00]")


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a response at a time, parsed as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pace: Pace | None = None) -> None:
        self._loop, self._pace = loop, pace
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: httpx.TransportError | None = None
        self._read_timeout: float | None = None
        self._read_by = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._pace_timer: asyncio.TimerHandle | None = None
        self._woke_at = 0.0  # when the reader was last woken for body bytes
        self._wakes = 0  # wake-ups for body bytes in this response
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self._keep_alive = False
        self._drained = False  # the body was read to its end
        self._busy = False  # a request is in flight
        self.answered = False
        """A byte of the response to the request in flight came."""
        self.idle_since = 0.0

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if not self._busy:  # bytes nobody asked for: this connection cannot be trusted
            self._fail(httpx.RemoteProtocolError("data on an idle connection"))
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self.head_done and self._until_close():
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        if not self.complete:
            why = f"connection lost: {exc}" if exc else "server disconnected"
            self._fail(httpx.RemoteProtocolError(why) if exc is None else httpx.ReadError(why))
        self._transport = None

    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # -- httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._interim():
            self.headers = []  # a 1xx before the response: skipped
            return
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        self._paced_wake()

    def _paced_wake(self) -> None:
        """Wake the reader for body bytes, at most once per pace: what comes meanwhile is
        read with them, one wake-up and one parse for several tokens. The first
        ``FREE_WAKES`` and the end are never held."""
        if self._waiter is None or self._pace_timer is not None:
            return  # the reader takes everything buffered when it next reads
        pace = self._pace() if self._pace is not None and self._wakes >= FREE_WAKES else 0.0
        due = self._woke_at + pace
        if pace <= 0 or self._loop.time() >= due:
            self._paced_due()
        else:
            self._pace_timer = self._loop.call_at(due, self._paced_due)

    def _paced_due(self) -> None:
        self._pace_timer = None
        self._woke_at, self._wakes = self._loop.time(), self._wakes + 1
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim():
            return
        self._keep_alive = self._parser.should_keep_alive()  # reset once the call returns
        self.complete = True
        self._wake()

    def _interim(self) -> bool:
        return 100 <= self._parser.get_status_code() < 200

    # -- used by the transport and the response stream -------------------------------------
    @property
    def reusable(self) -> bool:
        """Whether the next request may use this connection: the response was read to its
        end (nothing of it left to be taken for the next one) and the server keeps it open."""
        transport = self._transport
        return (
            self._drained
            and self._error is None
            and transport is not None
            and not transport.is_closing()
            and self._keep_alive
        )

    def send(self, head: bytes, body: bytes, read_timeout: float | None) -> None:
        """Start a request (the connection is fresh or idle)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise httpx.WriteError("connection closed")
        self._parser = httptools.HttpResponseParser(self)
        self.headers, self.head_done, self.complete = [], False, False
        self._keep_alive = self._drained = False
        self._woke_at, self._wakes = 0.0, 0
        self._busy, self.answered = True, False
        self._read_timeout = read_timeout
        transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            transport.write(body)

    async def head(self) -> int:
        """Wait for the status line and headers; the status code."""
        while not self.head_done:
            await self._wait()
        return self._parser.get_status_code()

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` once it is complete."""
        while not self._chunks:
            if self.complete:
                self._drained = True
                return b""
            await self._wait()
        chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= HIGH_WATER // 4 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    def idle(self) -> None:
        """Back in the pool: no request in flight, no timer."""
        self._busy = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._busy = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        if self._read_timeout is not None:
            # one timer re-armed lazily, not a new timer per read
            self._read_by = self._loop.time() + self._read_timeout
            if self._timer is not None and self._timer.when() > self._read_by:
                self._timer.cancel()  # set for a longer timeout: moved earlier at once
                self._timer = None
            if self._timer is None:
                self._timer = self._loop.call_at(self._read_by, self._check_timeout)
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _check_timeout(self) -> None:
        self._timer = None
        if self._waiter is None:
            return
        if self._chunks:  # bytes came in time; the pace held them
            self._wake()
            return
        if self._loop.time() < self._read_by:
            self._timer = self._loop.call_at(self._read_by, self._check_timeout)
            return
        self._fail(httpx.ReadTimeout("no data from the server in time"))
        self.close()

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._pace_timer is not None:  # woken now: the held wake-up is moot
            self._pace_timer.cancel()
            self._pace_timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one response; closing it early closes the connection."""

    def __init__(self, pool: LeanTransport, origin: Origin, connection: _Connection) -> None:
        self._pool, self._origin, self._connection = pool, origin, connection
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self._connection.read():
            yield chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.release(self._origin, self._connection)


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio + httptools, keeping up to ``max_idle`` connections per origin;
    ``pace`` spaces the wake-ups of each response's reader (a busy process)."""

    def __init__(
        self,
        *,
        max_idle: int = 100,
        verify: ssl.SSLContext | bool = True,
        pace: Pace | None = None,
    ) -> None:
        self._max_idle, self._pace = max_idle, pace
        self._ssl = (
            verify
            if isinstance(verify, ssl.SSLContext)
            else httpx.create_ssl_context(verify=verify)
        )
        self._idle: dict[Origin, list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        body = await request.aread()
        head = _head(request, body)
        connection, status = await self._send(origin, head, body, timeouts)
        if request.method == "HEAD":
            connection.complete = True
        return httpx.Response(
            status,
            headers=connection.headers,
            stream=_ResponseStream(self, origin, connection),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _send(
        self, origin: Origin, head: bytes, body: bytes, timeouts: dict[str, Any]
    ) -> tuple[_Connection, int]:
        """Send the request on a kept connection or a new one; (that one, the status)."""
        read = timeouts.get("read")
        kept = self._reuse(origin)
        if kept is not None:
            sent = time.monotonic()
            try:
                return kept, await _exchange(kept, head, body, read)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                if kept.answered or time.monotonic() - sent > KEEP_ALIVE_RACE_S:
                    raise
                # See KEEP_ALIVE_RACE_S: not a failed call (a chaos run counted one, with a
                # retry and a breaker failure, that no upstream had answered or recorded).
        connection = await self._connect(origin, timeouts.get("connect"))
        return connection, await _exchange(connection, head, body, read)

    def release(self, origin: Origin, connection: _Connection) -> None:
        """Keep a finished connection for the next request to ``origin``, or close it."""
        idle = self._idle.setdefault(origin, [])
        if connection.reusable and len(idle) < self._max_idle:
            connection.idle()
            connection.idle_since = time.monotonic()
            idle.append(connection)
        else:
            connection.close()

    def idle_connections(self) -> int:
        """Connections kept for reuse, all origins."""
        return sum(len(idle) for idle in self._idle.values())

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.reusable and now - connection.idle_since < IDLE_EXPIRY_S:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._ssl if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._pace), host, port, ssl=tls,
                    server_hostname=host if tls else None,
                )  # fmt: skip
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connecting to {host}:{port}: {exc}") from exc
        return connection


async def _exchange(connection: _Connection, head: bytes, body: bytes, read: float | None) -> int:
    """Send a request and wait for its head; the connection is closed if that fails."""
    try:
        connection.send(head, body, read)
        return await connection.head()
    except BaseException:
        connection.close()
        raise


def _head(request: httpx.Request, body: bytes) -> bytes:
    """The request line and headers (httpx has set Host and Content-Length already)."""
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        if _UNSAFE.search(name) or _UNSAFE.search(value):  # h11 refuses these too
            raise httpx.LocalProtocolError(f"illegal header {name!r}", request=request)
        if name.lower() == b"transfer-encoding":
            chunked = True
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    if chunked:  # the body was read whole: send its length instead
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    return b"".join(lines)

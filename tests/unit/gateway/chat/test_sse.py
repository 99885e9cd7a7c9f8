"""The SSE response: it streams until the body ends or the client leaves, and closes once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from echotune.gateway.chat.sse import SSEResponse


class Client:
    """The server's side of one connection: what was sent, and a disconnect to give."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()
        self.receive_error: Exception | None = None

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        if self.receive_error is not None:
            raise self.receive_error
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


class Body:
    """A body that yields its frames, then waits until told to go on; records how it ended."""

    def __init__(self, frames: list[bytes], *, then_wait: bool) -> None:
        self.frames, self.then_wait = frames, then_wait
        self.waiting = asyncio.Event()
        self.closed_by: str | None = None
        self.on_cancel: Exception | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self.frames:
                yield chunk
            if self.then_wait:
                self.waiting.set()
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.closed_by = "cancel"
            if self.on_cancel is not None:
                raise self.on_cancel from None
            raise
        else:
            self.closed_by = "end"


def respond(body: Body) -> tuple[SSEResponse, list[int]]:
    closes: list[int] = []
    response = SSEResponse(body.__aiter__(), headers={}, on_close=lambda: closes.append(1))
    return response, closes


async def served_until_waiting(client: Client, body: Body) -> tuple[asyncio.Task[None], list[int]]:
    """The response served in a task of its own, once its body waits for more."""
    response, closes = respond(body)
    serving = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
    await body.waiting.wait()
    return serving, closes


async def test_a_body_that_ends_is_sent_whole_and_closes_once() -> None:
    client, body = Client(), Body([b"a", b"b"], then_wait=False)
    response, closes = respond(body)
    await response({"type": "http"}, client.receive, client.send)
    assert client.bodies() == [b"a", b"b", b""]
    assert (body.closed_by, closes) == ("end", [1])


async def test_a_client_that_leaves_stops_the_body_at_once() -> None:
    client, body = Client(), Body([b"a"], then_wait=True)
    serving, closes = await served_until_waiting(client, body)
    client.leave.set()
    await serving  # ends without an error
    assert (body.closed_by, closes) == ("cancel", [1])
    assert client.bodies() == [b"a"]
    assert serving.cancelling() == 0  # its own stop taken back: later timeouts work


async def test_a_client_gone_at_once_still_closes() -> None:
    client, body = Client(), Body([], then_wait=True)
    client.leave.set()
    response, closes = respond(body)
    await response({"type": "http"}, client.receive, client.send)
    assert closes == [1]


async def test_a_cancel_from_outside_is_not_swallowed() -> None:
    client, body = Client(), Body([b"a"], then_wait=True)
    serving, closes = await served_until_waiting(client, body)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert (body.closed_by, closes) == ("cancel", [1])


async def test_a_cancel_from_outside_as_the_client_leaves_is_not_swallowed() -> None:
    client, body = Client(), Body([b"a"], then_wait=True)
    serving, closes = await served_until_waiting(client, body)
    client.leave.set()
    await asyncio.sleep(0)  # the listener sees the disconnect; its stop comes next turn
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert closes == [1]


async def test_a_body_that_turns_the_stop_into_an_error_raises_it_uncancelled() -> None:
    client, body = Client(), Body([b"a"], then_wait=True)
    serving, closes = await served_until_waiting(client, body)
    body.on_cancel = RuntimeError("cleaning up failed")
    client.leave.set()
    with pytest.raises(RuntimeError, match="cleaning up failed"):
        await serving
    assert (closes, serving.cancelling()) == ([1], 0)


async def test_a_write_to_a_closed_connection_ends_the_stream_quietly() -> None:
    client, body = Client(), Body([b"a", b"b"], then_wait=False)

    async def broken(message: dict[str, Any]) -> None:
        if message.get("body"):
            raise OSError("connection reset")
        await client.send(message)

    response, closes = respond(body)
    await response({"type": "http"}, client.receive, broken)
    assert closes == [1]


async def test_a_failing_receive_stops_the_body_and_is_raised() -> None:
    client, body = Client(), Body([b"a"], then_wait=True)
    client.receive_error = RuntimeError("the server broke")
    serving, closes = await served_until_waiting(client, body)
    client.leave.set()
    with pytest.raises(RuntimeError, match="the server broke"):
        await serving
    assert (body.closed_by, closes) == ("cancel", [1])


async def test_the_serving_task_goes_on_unharmed_and_no_task_is_left() -> None:
    """After the response, the server's task goes on (middlewares, the next request): the
    listener, cancelled as the body ended, must not cancel it on its way out."""
    client, body = Client(), Body([b"a"], then_wait=False)
    response, _ = respond(body)

    async def serve_then_go_on() -> None:
        before = asyncio.all_tasks()
        await response({"type": "http"}, client.receive, client.send)
        if listener := asyncio.all_tasks() - before:
            await asyncio.wait(listener)  # it ends, cancelled

    await serve_then_go_on()


async def test_a_cancel_asked_before_the_response_is_not_taken_for_the_clients() -> None:
    """A task that swallowed an earlier cancel still ends its response quietly when the client
    leaves: only the stop the response asked for is taken back."""
    client, body = Client(), Body([b"a"], then_wait=True)

    async def serve_after_a_swallowed_cancel() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        response, _ = respond(body)
        await response({"type": "http"}, client.receive, client.send)

    serving = asyncio.create_task(serve_after_a_swallowed_cancel())
    await body.waiting.wait()
    client.leave.set()
    await serving  # ends without an error
    assert serving.cancelling() == 1

"""The worker's SSE decoder, whatever the chunking of the body."""

from __future__ import annotations

import httpx
import pytest

from echotune.worker.providers.sse import SseEvent, sse_events

BODY = (
    b"\xef\xbb\xbf"  # a byte order mark (skipped: it hid the first field's name)
    b"data: first\n\n"
    b"event: keepalive\n\n"  # no data: not dispatched (the parsers failed on its "")
    b": a comment\r\n\r\n"
    b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    b"data: line one\ndata:line two\n\n"
    b"id: 7\nretry: 100\ndata: [DONE]\n\n"
    b"data: no final blank line"
)
EXPECTED = [
    SseEvent("message", "first"),
    SseEvent("message_start", '{"a": 1}'),
    SseEvent("message", "line one\nline two"),
    SseEvent("message", "[DONE]"),
    SseEvent("message", "no final blank line"),
]


async def decode(chunks: list[bytes]) -> list[SseEvent]:
    class Body(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for chunk in chunks:
                yield chunk

    response = httpx.Response(200, stream=Body())
    return [event async for event in sse_events(response)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(BODY)])
async def test_any_chunking_gives_the_same_events(size: int) -> None:
    chunks = [BODY[i : i + size] for i in range(0, len(BODY), size)]
    assert await decode(chunks) == EXPECTED

"""Decoding a ``text/event-stream`` body: a block of lines at a time, not a line at a time."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event (``id`` and ``retry`` fields are not needed here)."""

    event: str
    data: str


BOM = b"\xef\xbb\xbf"


def decode_block(block: bytes) -> SseEvent | None:
    """The event of one block (lines up to a blank line); ``None`` for a block without data
    (comments, a lone ``event:``), as the standard says."""
    if block.startswith(b"data: ") and b"\n" not in block:  # nearly every event: one line
        return SseEvent("message", block[6:].decode("utf-8", "replace"))
    event, data, seen = "message", [], False
    for line in block.split(b"\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            name, value = line, b""
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value.decode("utf-8", "replace"))
            seen = True
        elif name == b"event":
            event = value.decode("utf-8", "replace") or "message"
    return SseEvent(event, "\n".join(data)) if seen else None


def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it arrives: httpx's raw chunks (a layer less per chunk) unless it is
    content-encoded or already read (httpx decodes it, or hands over what it read)."""
    if "content-encoding" in response.headers or response.is_stream_consumed:
        return response.aiter_bytes()
    return response.aiter_raw()


async def sse_events(response: httpx.Response) -> AsyncGenerator[SseEvent, None]:
    """The events of ``response``'s body, as they arrive."""
    pending, started = b"", False
    async for chunk in body_chunks(response):
        pending += chunk
        if not started and (len(pending) >= len(BOM) or not BOM.startswith(pending)):
            started = True
            pending = pending.removeprefix(BOM)
        if b"\r" in pending:
            keep = pending.endswith(b"\r")  # its "\n" may come with the next chunk
            body = pending[:-1] if keep else pending
            pending = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep else b"")
        *blocks, pending = pending.split(b"\n\n")
        for block in blocks:
            if (event := decode_block(block)) is not None:
                yield event
    if pending.strip() and (event := decode_block(pending.strip(b"\r\n"))) is not None:
        yield event

"""A test SSE client that keeps everything the server sent, comments included."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    event: str | None = None
    data: str = ""
    id: str | None = None
    retry: int | None = None
    comment: str | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.data)


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """Parse ``text/event-stream``; a comment line is yielded as its own frame."""
    current = Frame()
    async for line in response.aiter_lines():
        if line == "":
            if current.event or current.data or current.id:
                yield current
            current = Frame()
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "":
            yield Frame(comment=value)
        elif name == "event":
            current.event = value
        elif name == "data":
            current.data = f"{current.data}\n{value}" if current.data else value
        elif name == "id":
            current.id = value
        elif name == "retry":
            current.retry = int(value)


@dataclass
class StreamResult:
    status: int
    headers: httpx.Headers
    frames: list[Frame]

    @property
    def events(self) -> list[Frame]:
        return [f for f in self.frames if f.comment is None]

    @property
    def text(self) -> str:
        return "".join(f.json["delta"] for f in self.events if f.event == "delta")

    @property
    def last(self) -> Frame:
        return self.events[-1]

    def of(self, event: str) -> list[Frame]:
        return [f for f in self.events if f.event == event]


async def read_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop_after: int | None = None,
    **kwargs: Any,
) -> StreamResult:
    """Read a whole SSE response (or only its first ``stop_after`` events, then disconnect)."""
    collected: list[Frame] = []
    async with client.stream(method, url, **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            return StreamResult(response.status_code, response.headers, [])
        count = 0
        async for frame in frames(response):
            collected.append(frame)
            if frame.comment is None:
                count += 1
                if stop_after is not None and count >= stop_after:
                    break
        return StreamResult(response.status_code, response.headers, collected)

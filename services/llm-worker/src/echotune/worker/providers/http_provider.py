"""Base class of the HTTP providers: one streamed request, a parser per protocol."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson

from echotune.common.providers import ProviderConfig
from echotune.worker.providers.base import REQUEST_ID_HEADER, ProviderRequest, StreamItem
from echotune.worker.providers.errors import (
    client_timeout,
    malformed,
    raise_for_status,
    translate_errors,
)
from echotune.worker.providers.sse import SseEvent, sse_events

DRAIN_TIMEOUT_S = 0.5


def load_json(provider: str, data: str) -> dict[str, Any]:
    """The JSON object carried by an SSE ``data`` field, or a malformed_stream error."""
    try:
        value = _parse(data)
    except ValueError as exc:
        raise malformed(provider, f"unparsable data {data[:80]!r}") from exc
    if not isinstance(value, dict):
        raise malformed(provider, f"data is not an object: {data[:80]!r}")
    return value


def _parse(data: str) -> Any:
    """orjson's reading, or Python's for what orjson refuses (NaN, half a surrogate pair:
    read as U+FFFD). Unlike Python's, an integer past 64 bits comes as a float (finding one
    first would cost more than the parse; providers send ids past 2^53 as strings)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _whole_text(json.loads(data))


def _whole_text(value: Any) -> Any:
    """``value`` with each half of a surrogate pair in its strings as U+FFFD: UTF-8, hence
    Redis and the clients, cannot carry one (an escape in JSON can)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_whole_text(k): _whole_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_text(v) for v in value]
    return value


def join_url(config: ProviderConfig, path: str) -> str:
    """``config.base_url`` without trailing slash, followed by ``path``."""
    return str(config.base_url).rstrip("/") + path


@functools.lru_cache(maxsize=256)
def parsed_url(url: str) -> httpx.URL:
    """``url`` parsed once: httpx parses a string on every request (10–20 µs)."""
    return httpx.URL(url)


class StreamParser(Protocol):
    """Turns a provider's SSE events into stream items."""

    done: bool

    def feed(self, event: SseEvent) -> list[StreamItem]: ...

    def end(self) -> list[StreamItem]: ...


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One provider HTTP request."""

    url: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class HttpProvider(ABC):
    """Base of the SSE-streaming HTTP providers; subclasses build the call and the parser."""

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client

    @property
    def secret(self) -> str | None:
        """The API key in clear, or None."""
        key = self.config.api_key
        return key.get_secret_value() if key is not None else None

    @abstractmethod
    def prepare(self, request: ProviderRequest) -> HttpCall:
        """The HTTP request for ``request``."""

    @abstractmethod
    def parser(self, request: ProviderRequest) -> StreamParser:
        """A fresh parser for the response stream of ``request``."""

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamItem, None]:
        """Stream the answer; closing this generator closes the upstream response."""
        call = self.prepare(request)
        headers = {**call.headers, REQUEST_ID_HEADER: request.request_id}
        parser = self.parser(request)
        name = self.config.name
        with translate_errors(name, self.secret):
            async with self.client.stream(
                "POST",
                parsed_url(call.url),
                json=call.body,
                headers={**headers, "Accept": "text/event-stream", "Cache-Control": "no-store"},
                timeout=client_timeout(self.config),
            ) as response:
                await raise_for_status(response, name, self.secret)
                kind = response.headers.get("content-type", "").partition(";")[0].strip()
                if kind != "text/event-stream":
                    raise malformed(name, f"expected text/event-stream, got {kind!r}")
                async with contextlib.aclosing(sse_events(response)) as events:
                    async for event in events:
                        items = parser.feed(event)
                        if parser.done:
                            await _drain(events)
                        for item in items:
                            yield item
                        if parser.done:
                            return
                for item in parser.end():
                    yield item


async def _drain(events: AsyncIterator[SseEvent]) -> None:
    """Read what follows the end marker (briefly) so the connection can be reused."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in events:
                pass

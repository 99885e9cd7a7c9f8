"""The one small interface every provider implements, and the errors it raises."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from echotune.common.completion import CompletionFeatures, TokenLogprob, ToolCallDelta
from echotune.common.listening_profile import ListeningProfile
from echotune.common.messages import ChatMessage, FinishReason, Usage
from echotune.common.providers import ProviderConfig
from echotune.worker.providers.transport import LeanTransport, Pace

REQUEST_ID_HEADER = "X-Request-Id"
MAX_IDLE_CONNECTIONS = 100
"""Idle provider connections a worker process keeps (per origin with the lean transport)."""


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """What a provider needs to produce one answer."""

    request_id: str
    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    features: CompletionFeatures | None = None
    profile: ListeningProfile | None = None
    """The listening profile stated in the system prompt (the demo provider reads it)."""

    @property
    def wants_json(self) -> bool:
        return self.features is not None and self.features.wants_json


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A piece of answer text as the provider sent it, with its tokens' logprobs if asked."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCallChunk:
    """A piece of a tool call, already in OpenAI's streamed shape."""

    delta: ToolCallDelta


@dataclass(frozen=True, slots=True)
class Finish:
    """The provider ended the answer normally."""

    reason: FinishReason = FinishReason.STOP
    usage: Usage = field(default_factory=Usage)


StreamItem = TextChunk | ToolCallChunk | Finish


class ProviderError(Exception):
    """A failed provider call, classified for retry, breaker and telemetry decisions.

    ``code`` is the telemetry error code: ``http_<status>``, ``rate_limited``, ``timeout``,
    ``connect_error``, ``malformed_stream``, ``disconnected``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


class Provider(Protocol):
    """Streams one answer; closing the iterator closes the upstream HTTP response."""

    config: ProviderConfig

    def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamItem, None]: ...


def make_client(
    transport: httpx.AsyncBaseTransport | None = None,
    kind: str = "lean",
    pace: Pace | None = None,
) -> httpx.AsyncClient:
    """The HTTP client a worker process shares between its provider calls (``transport``: a
    test's seam; else ``kind`` chooses the lean transport, whose readers ``pace`` spaces, or
    httpx's own)."""
    if transport is None and kind == "lean":
        transport = LeanTransport(max_idle=MAX_IDLE_CONNECTIONS, pace=pace)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=MAX_IDLE_CONNECTIONS)
    return httpx.AsyncClient(transport=transport, limits=limits, timeout=None)

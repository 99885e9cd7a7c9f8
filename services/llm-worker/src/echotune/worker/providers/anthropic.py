"""Anthropic Messages API streaming."""

from __future__ import annotations

from typing import Any

from httpx_sse import ServerSentEvent

from echotune.common.messages import FinishReason, Role, Usage
from echotune.worker.providers.base import (
    Finish,
    ProviderError,
    ProviderRequest,
    StreamItem,
    TextChunk,
)
from echotune.worker.providers.http import (
    as_dict,
    as_int,
    error_detail,
    malformed,
    status_error,
)
from echotune.worker.providers.sse import (
    HttpCall,
    HttpProvider,
    join_url,
    load_json,
    system_and_turns,
)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
FINISH_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "refusal": FinishReason.CONTENT_FILTER,
}
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_event(provider: str, data: dict[str, Any]) -> ProviderError:
    """The ProviderError for an ``error`` event, with the status its error type implies."""
    kind = as_dict(data.get("error")).get("type")
    status = ERROR_STATUS.get(kind if isinstance(kind, str) else "", 500)
    return status_error(provider, status, f"{kind}: {error_detail(data)}")


class AnthropicParser:
    """Parses the named Messages events up to ``message_stop``."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self.reason = FinishReason.STOP
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def feed(self, event: ServerSentEvent) -> list[StreamItem]:
        """Items carried by one event."""
        if self.done or event.event == "ping":
            return []
        data = load_json(self.provider, event.data)
        kind = event.event if event.event != "message" else data.get("type")
        if kind == "error":
            raise error_event(self.provider, data)
        if kind == "message_start":
            self._usage(as_dict(as_dict(data.get("message")).get("usage")))
        elif kind == "content_block_delta":
            delta = as_dict(data.get("delta"))
            text = delta.get("text")
            if delta.get("type") == "text_delta" and isinstance(text, str) and text:
                return [TextChunk(text)]
        elif kind == "message_delta":
            reason = as_dict(data.get("delta")).get("stop_reason")
            if isinstance(reason, str):
                self.reason = FINISH_REASONS.get(reason, FinishReason.STOP)
            self._usage(as_dict(data.get("usage")))
        elif kind == "message_stop":
            self.done = True
            usage = Usage(
                prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens
            )
            return [Finish(self.reason, usage)]
        return []

    def _usage(self, usage: dict[str, Any]) -> None:
        """Take the (cumulative) token counts a usage object carries."""
        if "input_tokens" in usage:
            self.prompt_tokens = sum(
                as_int(usage.get(k))
                for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
            )
        if "output_tokens" in usage:
            self.completion_tokens = as_int(usage.get("output_tokens"))

    def end(self) -> list[StreamItem]:
        """The body ended before ``message_stop``: the stream is malformed."""
        raise malformed(self.provider, "the stream ended without message_stop")


class AnthropicProvider(HttpProvider):
    """POST {base_url}/v1/messages; base_url is the API root (``https://api.anthropic.com``).

    A base_url that already ends in ``/v1`` is accepted too (``/v1`` is not doubled).
    """

    def prepare(self, request: ProviderRequest) -> HttpCall:
        """The messages call for ``request``."""
        system, turns = system_and_turns(request.messages)
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [
                {"role": "assistant" if role is Role.ASSISTANT else "user", "content": text}
                for role, text in turns
            ],
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "stream": True,
        }
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        headers = {"anthropic-version": API_VERSION}
        if self.secret:
            headers["x-api-key"] = self.secret
        root = str(self.config.base_url).rstrip("/")
        path = "/messages" if root.endswith("/v1") else "/v1/messages"
        return HttpCall(join_url(self.config, path), body, headers)

    def parser(self) -> AnthropicParser:
        """A fresh event parser."""
        return AnthropicParser(self.config.name)

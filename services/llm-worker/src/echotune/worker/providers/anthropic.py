"""Anthropic Messages API streaming."""

from __future__ import annotations

from typing import Any

from echotune.common.completion import FunctionCallDelta, ToolCallDelta
from echotune.common.messages import FinishReason, Usage
from echotune.worker.providers.anthropic_request import JSON_TOOL, messages_body
from echotune.worker.providers.base import (
    Finish,
    ProviderError,
    ProviderRequest,
    StreamItem,
    TextChunk,
    ToolCallChunk,
)
from echotune.worker.providers.errors import (
    as_dict,
    as_int,
    error_detail,
    malformed,
    status_error,
)
from echotune.worker.providers.http_provider import HttpCall, HttpProvider, join_url, load_json
from echotune.worker.providers.sse import SseEvent

API_VERSION = "2023-06-01"
FINISH_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "refusal": FinishReason.CONTENT_FILTER,
    "tool_use": FinishReason.TOOL_CALLS,
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
    """Parses the named Messages events up to ``message_stop``.

    ``tool_use`` blocks become tool-call pieces numbered in order of appearance; in JSON mode
    the input of the :data:`JSON_TOOL` call is the answer's text.
    """

    def __init__(self, provider: str, json_mode: bool = False) -> None:
        self.provider = provider
        self.json_mode = json_mode
        self.done = False
        self.reason = FinishReason.STOP
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.tool_index: dict[int, int] = {}  # content block index → tool call index
        self.json_blocks: set[int] = set()
        self.silent: set[int] = set()  # tool blocks whose input has not come yet

    def feed(self, event: SseEvent) -> list[StreamItem]:
        """Items carried by one event."""
        if self.done or event.event == "ping":
            return []
        data = load_json(self.provider, event.data)
        kind = event.event if event.event != "message" else data.get("type")
        if kind == "error":
            raise error_event(self.provider, data)
        if kind == "message_start":
            self._usage(as_dict(as_dict(data.get("message")).get("usage")))
        elif kind == "content_block_start":
            return self._block_start(data)
        elif kind == "content_block_delta":
            return self._block_delta(data)
        elif kind == "content_block_stop":
            return self._block_stop(data.get("index"))
        elif kind == "message_delta":
            reason = as_dict(data.get("delta")).get("stop_reason")
            if isinstance(reason, str):
                self.reason = FINISH_REASONS.get(reason, FinishReason.STOP)
                if self.json_mode and self.reason is FinishReason.TOOL_CALLS:
                    self.reason = FinishReason.STOP  # the forced JSON tool is the answer
            self._usage(as_dict(data.get("usage")))
        elif kind == "message_stop":
            self.done = True
            usage = Usage(
                prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens
            )
            return [Finish(self.reason, usage)]
        return []

    def _block_start(self, data: dict[str, Any]) -> list[StreamItem]:
        block = as_dict(data.get("content_block"))
        index = data.get("index")
        if block.get("type") != "tool_use" or not isinstance(index, int):
            return []
        name, call_id = block.get("name"), block.get("id")
        if not (isinstance(name, str) and isinstance(call_id, str)):
            raise malformed(self.provider, "a tool_use block without id or name")
        if self.json_mode and name == JSON_TOOL:
            self.json_blocks.add(index)
            return []
        self.tool_index[index] = len(self.tool_index)
        self.silent.add(index)
        function = FunctionCallDelta(name=name, arguments="")
        call = ToolCallDelta(
            index=self.tool_index[index], id=call_id, type="function", function=function
        )
        return [ToolCallChunk(call)]

    def _block_delta(self, data: dict[str, Any]) -> list[StreamItem]:
        delta, index = as_dict(data.get("delta")), data.get("index")
        if delta.get("type") == "text_delta":
            text = delta.get("text")
            return [TextChunk(text)] if isinstance(text, str) and text else []
        piece = delta.get("partial_json")
        if delta.get("type") != "input_json_delta" or not isinstance(piece, str) or not piece:
            return []
        if index in self.json_blocks:
            return [TextChunk(piece)]
        if not isinstance(index, int) or index not in self.tool_index:
            raise malformed(self.provider, "input_json_delta outside a tool_use block")
        self.silent.discard(index)
        return [self._arguments(index, piece)]

    def _block_stop(self, index: Any) -> list[StreamItem]:
        """A tool call whose input never came has no arguments: ``{}``, as OpenAI sends."""
        if index not in self.silent:
            return []
        self.silent.discard(index)
        return [self._arguments(index, "{}")]

    def _arguments(self, index: int, piece: str) -> ToolCallChunk:
        function = FunctionCallDelta(arguments=piece)
        return ToolCallChunk(ToolCallDelta(index=self.tool_index[index], function=function))

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
        body = messages_body(request)
        headers = {"anthropic-version": API_VERSION}
        if self.secret:
            headers["x-api-key"] = self.secret
        root = str(self.config.base_url).rstrip("/")
        path = "/messages" if root.endswith("/v1") else "/v1/messages"
        return HttpCall(join_url(self.config, path), body, headers)

    def parser(self, request: ProviderRequest) -> AnthropicParser:
        """A fresh event parser."""
        return AnthropicParser(self.config.name, json_mode=request.wants_json)

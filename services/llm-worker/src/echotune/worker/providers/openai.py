"""OpenAI-compatible Chat Completions streaming (OpenAI, Ollama, vLLM, OpenRouter, Groq)."""

from __future__ import annotations

from typing import Any

from echotune.common.completion import TokenLogprob, ToolCallDelta
from echotune.common.messages import ChatMessage, FinishReason, Usage
from echotune.worker.providers.base import (
    Finish,
    ProviderRequest,
    StreamItem,
    TextChunk,
    ToolCallChunk,
)
from echotune.worker.providers.errors import (
    as_dict,
    as_int,
    as_list,
    malformed,
    payload_error,
)
from echotune.worker.providers.http_provider import (
    HttpCall,
    HttpProvider,
    join_url,
    load_json,
)
from echotune.worker.providers.sse import SseEvent

DONE_MARKER = "[DONE]"
FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


class OpenAIParser:
    """Parses ``data: {chunk}`` events up to ``data: [DONE]``."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self.reason = FinishReason.STOP
        self.usage = Usage()

    def feed(self, event: SseEvent) -> list[StreamItem]:
        """Items carried by one event."""
        if self.done:
            return []
        if event.data.strip() == DONE_MARKER:
            self.done = True
            return [Finish(self.reason, self.usage)]
        chunk = load_json(self.provider, event.data)
        if (text := _plain_text(chunk)) is not None:
            return [TextChunk(text, ())] if text else []
        if "error" in chunk:
            raise payload_error(self.provider, chunk)
        items: list[StreamItem] = []
        for choice in as_list(chunk.get("choices")):
            choice = as_dict(choice)
            if choice.get("index", 0) != 0:
                continue
            delta = as_dict(choice.get("delta"))
            logprobs = as_dict(choice.get("logprobs")).get("content")
            items += _text(self.provider, delta.get("content"), logprobs)
            items += _text(self.provider, delta.get("refusal"), None)  # shown as the answer
            items += _tool_calls(self.provider, delta.get("tool_calls"))
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.reason = FINISH_REASONS.get(reason, FinishReason.STOP)
        usage = as_dict(chunk.get("usage") or as_dict(chunk.get("x_groq")).get("usage"))
        if usage:
            self.usage = Usage(
                prompt_tokens=as_int(usage.get("prompt_tokens")),
                completion_tokens=as_int(usage.get("completion_tokens")),
            )
        return items

    def end(self) -> list[StreamItem]:
        """The body ended before ``[DONE]``: the stream is malformed."""
        raise malformed(self.provider, "the stream ended without data: [DONE]")


def _plain_text(chunk: dict[str, Any]) -> str | None:
    """The text of nearly every chunk (one choice carrying text only, no usage), read with
    fewer steps than :meth:`OpenAIParser.feed` takes; ``None`` for any other chunk."""
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or chunk.get("usage") is not None:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("index", 0) != 0:
        return None
    if choice.get("finish_reason") is not None or choice.get("logprobs") is not None:
        return None
    delta = choice.get("delta")
    if type(delta) is not dict or len(delta) > 2 or "error" in chunk or "x_groq" in chunk:
        return None
    content = delta.get("content")
    if type(content) is not str or (len(delta) == 2 and delta.get("role") is None):
        return None
    return content


def _text(provider: str, content: Any, logprobs: Any) -> list[StreamItem]:
    """The text of a delta, with the logprobs of its tokens when they came."""
    text = content if isinstance(content, str) else ""
    if logprobs is None:  # nearly every delta: no logprobs asked
        return [TextChunk(text, ())] if text else []
    try:
        tokens = tuple(TokenLogprob.model_validate(t) for t in as_list(logprobs))
    except ValueError as exc:
        raise malformed(provider, f"unreadable logprobs {logprobs!r:.80}") from exc
    return [TextChunk(text, tokens)] if text or tokens else []


def _tool_calls(provider: str, value: Any) -> list[StreamItem]:
    """The tool-call pieces of a delta (their position is their index when it is missing)."""
    items: list[StreamItem] = []
    for position, call in enumerate(as_list(value)):
        call = as_dict(call)
        try:
            delta = ToolCallDelta.model_validate({"index": position, **call})
        except ValueError as exc:
            raise malformed(provider, f"unreadable tool call {call!r:.80}") from exc
        items.append(ToolCallChunk(delta))
    return items


def wire_message(message: ChatMessage) -> dict[str, Any]:
    """A message as Chat Completions takes it."""
    wire: dict[str, Any] = {"role": message.role.value, "content": message.content}
    if message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


class OpenAIProvider(HttpProvider):
    """POST {base_url}/chat/completions with ``stream: true``; base_url ends in ``/v1``."""

    def prepare(self, request: ProviderRequest) -> HttpCall:
        """The chat completions call for ``request``."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [wire_message(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:  # or its newer name, among the features
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.features is not None:  # its fields are Chat Completions fields: sent as is
            body.update(request.features.model_dump(exclude_none=True))
            if "max_completion_tokens" in body:
                body.pop("max_tokens", None)
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        return HttpCall(join_url(self.config, "/chat/completions"), body, headers)

    def parser(self, request: ProviderRequest) -> OpenAIParser:
        """A fresh chunk parser."""
        return OpenAIParser(self.config.name)

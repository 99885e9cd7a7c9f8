"""OpenAI-compatible Chat Completions streaming (OpenAI, Ollama, vLLM, OpenRouter, Groq)."""

from __future__ import annotations

from typing import Any

from httpx_sse import ServerSentEvent

from echotune.common.messages import FinishReason, Usage
from echotune.worker.providers.base import (
    Finish,
    ProviderRequest,
    StreamItem,
    TextChunk,
)
from echotune.worker.providers.http import (
    as_dict,
    as_int,
    as_list,
    malformed,
    payload_error,
)
from echotune.worker.providers.sse import (
    HttpCall,
    HttpProvider,
    join_url,
    load_json,
)

DONE_MARKER = "[DONE]"
FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
}


class OpenAIParser:
    """Parses ``data: {chunk}`` events up to ``data: [DONE]``."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self.reason = FinishReason.STOP
        self.usage = Usage()

    def feed(self, event: ServerSentEvent) -> list[StreamItem]:
        """Items carried by one event."""
        if self.done:
            return []
        if event.data.strip() == DONE_MARKER:
            self.done = True
            return [Finish(self.reason, self.usage)]
        chunk = load_json(self.provider, event.data)
        if "error" in chunk:
            raise payload_error(self.provider, chunk)
        items: list[StreamItem] = []
        for choice in as_list(chunk.get("choices")):
            choice = as_dict(choice)
            if choice.get("index", 0) != 0:
                continue
            content = as_dict(choice.get("delta")).get("content")
            if isinstance(content, str) and content:
                items.append(TextChunk(content))
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


class OpenAIProvider(HttpProvider):
    """POST {base_url}/chat/completions with ``stream: true``; base_url ends in ``/v1``."""

    def prepare(self, request: ProviderRequest) -> HttpCall:
        """The chat completions call for ``request``."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role.value, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        return HttpCall(join_url(self.config, "/chat/completions"), body, headers)

    def parser(self) -> OpenAIParser:
        """A fresh chunk parser."""
        return OpenAIParser(self.config.name)

"""Google Gemini ``streamGenerateContent`` streaming (``alt=sse``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from httpx_sse import ServerSentEvent

from echotune.common.messages import FinishReason, Role, Usage
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
    system_and_turns,
)

FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "OTHER_SAFETY",
    }
)


def finish_reason(value: str) -> FinishReason:
    """Our FinishReason for a Gemini ``finishReason``."""
    if value == "MAX_TOKENS":
        return FinishReason.LENGTH
    if value in FILTERED:
        return FinishReason.CONTENT_FILTER
    return FinishReason.STOP


class GeminiParser:
    """Parses GenerateContentResponse chunks; the stream ends with the HTTP body."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self.reason: FinishReason | None = None
        self.usage = Usage()

    def feed(self, event: ServerSentEvent) -> list[StreamItem]:
        """Items carried by one event."""
        chunk = load_json(self.provider, event.data)
        if "error" in chunk:
            raise payload_error(self.provider, chunk)
        items: list[StreamItem] = []
        candidates = as_list(chunk.get("candidates"))
        candidate = as_dict(candidates[0]) if candidates else {}
        for part in as_list(as_dict(candidate.get("content")).get("parts")):
            part = as_dict(part)
            text = part.get("text")
            if isinstance(text, str) and text and not part.get("thought"):
                items.append(TextChunk(text))
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
            self.reason = finish_reason(reason)
        if as_dict(chunk.get("promptFeedback")).get("blockReason"):
            self.reason = FinishReason.CONTENT_FILTER
        meta = as_dict(chunk.get("usageMetadata"))
        if meta:
            self.usage = Usage(
                prompt_tokens=as_int(meta.get("promptTokenCount")),
                completion_tokens=as_int(meta.get("candidatesTokenCount"))
                + as_int(meta.get("thoughtsTokenCount")),
            )
        return items

    def end(self) -> list[StreamItem]:
        """The body ended: a Finish if a finishReason was seen, else malformed_stream."""
        if self.reason is None:
            raise malformed(self.provider, "the stream ended without a finishReason")
        return [Finish(self.reason, self.usage)]


class GeminiProvider(HttpProvider):
    """POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse.

    base_url is the API root, e.g. ``https://generativelanguage.googleapis.com``.
    """

    def prepare(self, request: ProviderRequest) -> HttpCall:
        """The streamGenerateContent call for ``request``."""
        system, turns = system_and_turns(request.messages)
        body: dict[str, Any] = {
            "contents": [
                {"role": "model" if role is Role.ASSISTANT else "user", "parts": [{"text": text}]}
                for role, text in turns
            ]
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config: dict[str, Any] = {}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if config:
            body["generationConfig"] = config
        headers = {"x-goog-api-key": self.secret} if self.secret else {}
        model = quote(request.model.removeprefix("models/"), safe="-._~")
        path = f"/v1beta/models/{model}:streamGenerateContent"
        return HttpCall(join_url(self.config, path), body, headers, {"alt": "sse"})

    def parser(self) -> GeminiParser:
        """A fresh chunk parser."""
        return GeminiParser(self.config.name)

"""Google Gemini ``streamGenerateContent`` streaming (``alt=sse``)."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

from echotune.common.completion import (
    FunctionCallDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    token_bytes,
)
from echotune.common.messages import FinishReason, Usage
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
from echotune.worker.providers.gemini_request import SIGNATURE_MARK, generate_body
from echotune.worker.providers.http_provider import HttpCall, HttpProvider, join_url, load_json
from echotune.worker.providers.sse import SseEvent

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

FAILED_CALLS = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})
"""Finish reasons of a function call the model got wrong: a failed attempt, not an answer."""


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
        self.tool_calls = 0

    def feed(self, event: SseEvent) -> list[StreamItem]:
        """Items carried by one event."""
        chunk = load_json(self.provider, event.data)
        if "error" in chunk:
            raise payload_error(self.provider, chunk)
        candidates = as_list(chunk.get("candidates"))
        candidate = as_dict(candidates[0]) if candidates else {}
        items = self._parts(as_list(as_dict(candidate.get("content")).get("parts")))
        items = _with_logprobs(items, _logprobs(as_dict(candidate.get("logprobsResult"))))
        reason = candidate.get("finishReason")
        if reason in FAILED_CALLS:
            raise malformed(self.provider, f"the answer ended with {reason}")
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

    def _parts(self, parts: list[Any]) -> list[StreamItem]:
        """Text (thoughts left out) and function calls of one chunk."""
        items: list[StreamItem] = []
        for part in map(as_dict, parts):
            text = part.get("text")
            if isinstance(text, str) and text and not part.get("thought"):
                items.append(TextChunk(text))
            call = as_dict(part.get("functionCall"))
            if call:
                items.append(self._call(call, part.get("thoughtSignature")))
        return items

    def _call(self, call: dict[str, Any], signature: Any) -> ToolCallChunk:
        """A whole function call as the one piece of an OpenAI tool call."""
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise malformed(self.provider, "a functionCall without a name")
        call_id = call.get("id") if isinstance(call.get("id"), str) else None
        call_id = call_id or f"call_{uuid.uuid4().hex[:24]}"
        if isinstance(signature, str) and signature:
            call_id = f"{call_id}{SIGNATURE_MARK}{signature}"
        arguments = json.dumps(as_dict(call.get("args")))
        function = FunctionCallDelta(name=name, arguments=arguments)
        delta = ToolCallDelta(index=self.tool_calls, id=call_id, type="function", function=function)
        self.tool_calls += 1
        return ToolCallChunk(delta)

    def end(self) -> list[StreamItem]:
        """The body ended: a Finish if a finishReason was seen, else malformed_stream."""
        if self.reason is None:
            raise malformed(self.provider, "the stream ended without a finishReason")
        if self.tool_calls and self.reason is FinishReason.STOP:
            return [Finish(FinishReason.TOOL_CALLS, self.usage)]
        return [Finish(self.reason, self.usage)]


def _with_logprobs(items: list[StreamItem], logprobs: tuple[TokenLogprob, ...]) -> list[StreamItem]:
    """``items`` with the chunk's logprobs on its text (a text-less chunk gets its own item)."""
    if not logprobs:
        return items
    merged = "".join(item.text for item in items if isinstance(item, TextChunk))
    others = [item for item in items if not isinstance(item, TextChunk)]
    return [TextChunk(merged, logprobs), *others]


def _logprobs(result: dict[str, Any]) -> tuple[TokenLogprob, ...]:
    """OpenAI-shaped logprobs of a chunk's tokens from Gemini's ``logprobsResult``."""
    chosen = as_list(result.get("chosenCandidates"))
    tops = as_list(result.get("topCandidates"))
    tokens: list[TokenLogprob] = []
    for step, candidate in enumerate(map(as_dict, chosen)):
        alternatives = as_list(as_dict(tops[step]).get("candidates")) if step < len(tops) else []
        tokens.append(
            TokenLogprob(
                **_top(candidate).model_dump(),
                top_logprobs=[_top(as_dict(a)) for a in alternatives],
            )
        )
    return tuple(tokens)


def _top(candidate: dict[str, Any]) -> TopLogprob:
    token = candidate.get("token")
    token = token if isinstance(token, str) else ""
    logprob = candidate.get("logProbability")
    value = float(logprob) if isinstance(logprob, int | float) else 0.0
    return TopLogprob(token=token, logprob=value, bytes=token_bytes(token))


class GeminiProvider(HttpProvider):
    """POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse.

    base_url is the API root, e.g. ``https://generativelanguage.googleapis.com``.
    """

    def prepare(self, request: ProviderRequest) -> HttpCall:
        """The streamGenerateContent call for ``request``."""
        body = generate_body(request)
        headers = {"x-goog-api-key": self.secret} if self.secret else {}
        model = quote(request.model.removeprefix("models/"), safe="-._~")
        path = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
        return HttpCall(join_url(self.config, path), body, headers)

    def parser(self, request: ProviderRequest) -> GeminiParser:
        """A fresh chunk parser."""
        return GeminiParser(self.config.name)

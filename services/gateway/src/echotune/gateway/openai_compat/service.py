"""Our events as OpenAI objects: streamed chunks or one completion; the ``model`` rule."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from echotune.common.messages import (
    EVENTS_LOST,
    SCHEMA_VERSION,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    FailoverEvent,
    FinishReason,
    decode_event,
)
from echotune.common.providers import ProviderRegistry
from echotune.gateway.chat.relay import Entry
from echotune.web.errors import ApiError

# Our error codes → the HTTP status an OpenAI client expects for them.
ERROR_STATUS = {
    "rate_limited": 429,
    "deadline_exceeded": 504,
    "shutdown": 503,
    "worker_lost": 503,
    "no_worker": 503,
    "invalid_job": 500,
    "internal_error": 500,
    "request_refused": 400,
}


def resolve_model(registry: ProviderRegistry, model: str) -> tuple[str, str]:
    """Provider and model named by an OpenAI ``model`` string (see ``MODEL_RULE``)."""
    provider, _, name = model.partition("/")
    if name and (config := registry.get(provider)):
        if name not in config.models:
            raise ApiError(404, "model_not_found", f"The model `{model}` does not exist")
        return provider, name
    if config := registry.get(model):
        return config.name, config.model
    if config := registry.offering(model):
        return config.name, model
    raise ApiError(404, "model_not_found", f"The model `{model}` does not exist")


@dataclass
class Completion:
    """Accumulates one answer from our events."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    cancelled: bool = False
    """Its ``finish_reason`` reads ``stop``: the answer was cancelled."""
    usage: dict[str, int] | None = None
    error: tuple[int, str, str] | None = None
    restarted: bool = False
    """The answer started over (``discard_partial``): the text so far is void."""
    replayed: bool = False
    """The restart replays the same answer (Redis lost entries): the text so far comes again."""

    def absorb(self, entry: Entry) -> Piece | None:
        """Take in one event; the piece of the answer it carries, if any."""
        fields = {"v": str(SCHEMA_VERSION), "type": entry.type, "data": entry.data}
        match decode_event(fields):
            case FailoverEvent(discard_partial=True) as failover:
                self.text.clear()
                self.tool_calls.clear()
                self.logprobs = None
                self.restarted = True
                self.replayed = failover.reason == EVENTS_LOST
            case DeltaEvent() as delta:
                return self._piece(delta)
            case DoneEvent() as done:
                self.model = f"{done.provider}/{done.model}"
                reason = done.finish_reason
                self.cancelled = reason is FinishReason.CANCELLED
                self.finish_reason = "stop" if self.cancelled else reason.value
                prompt, completion = done.usage.prompt_tokens, done.usage.completion_tokens
                self.usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
            case ErrorEvent() as error:
                status = ERROR_STATUS.get(error.code.value, 502)
                self.error = (status, error.code.value, error.message)
        return None

    def _piece(self, event: DeltaEvent) -> Piece | None:
        delta: dict[str, Any] = {}
        if event.delta:
            self.text.append(event.delta)
            delta["content"] = event.delta
        if event.tool_calls:
            calls = [call.model_dump(mode="json", exclude_none=True) for call in event.tool_calls]
            delta["tool_calls"] = calls
            for call in calls:
                self._merge_call(call)
        logprobs = None
        if event.logprobs is not None:
            logprobs = [lp.model_dump(mode="json", exclude_none=True) for lp in event.logprobs]
            self.logprobs = [*(self.logprobs or []), *logprobs]
        if not delta and logprobs is None:
            return None
        return Piece(delta, _logprobs_object(logprobs))

    def _merge_call(self, call: dict[str, Any]) -> None:
        """Add one streamed tool-call piece to the whole call it belongs to."""
        whole = self.tool_calls.setdefault(
            call["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        whole["id"] = call.get("id") or whole["id"]
        function = call.get("function") or {}
        whole["function"]["name"] = function.get("name") or whole["function"]["name"]
        whole["function"]["arguments"] += function.get("arguments") or ""

    def chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def usage_chunk(self) -> dict[str, Any]:
        return {**self.chunk({}), "choices": [], "usage": self.usage}

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text)}
        if self.tool_calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": _logprobs_object(self.logprobs),
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
        }


@dataclass(frozen=True, slots=True)
class Piece:
    """What one of our delta events adds to a chunk: its delta and its tokens' logprobs."""

    delta: dict[str, Any]
    logprobs: dict[str, Any] | None


def _logprobs_object(tokens: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if tokens is None else {"content": tokens, "refusal": None}


def sse_data(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


INTERRUPTED = (503, "worker_lost", "the answer was interrupted; retry the request")


@dataclass
class Sent:
    """The text a streaming client already has, so that a replay of it is not sent again."""

    text: str = ""
    any: bool = False
    plain: bool = True
    """Only text was sent (no tool calls, no logprobs): a replay of it can be matched."""
    echo: str = ""
    """After a replay's restart, the sent text the replay has still to repeat."""
    diverged: bool = False

    def add(self, piece: Piece) -> None:
        self.any = True
        self.plain = self.plain and piece.logprobs is None and set(piece.delta) <= {"content"}
        self.text += piece.delta.get("content", "")

    def replay(self) -> bool:
        """A replay of the answer begins: whether what was sent can be matched against it."""
        self.echo = self.text
        return self.plain

    def repeats(self, piece: Piece) -> bool:
        """Whether ``piece`` only repeats sent text; trims the part past it off ``piece``."""
        if not self.echo:
            return False
        content = piece.delta.get("content", "")
        if piece.logprobs is not None or set(piece.delta) - {"content"}:
            self.diverged = True
            return False
        if self.echo.startswith(content):
            self.echo = self.echo[len(content) :]
            return True
        if not content.startswith(self.echo):
            self.diverged = True
            return False
        piece.delta["content"] = content[len(self.echo) :]
        self.echo = ""
        return False


async def chunk_stream(
    completion: Completion, entries: AsyncIterator[Entry | None], include_usage: bool
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` frames: role first, then content, finish, usage, ``[DONE]``."""
    yield sse_data(completion.chunk({"role": "assistant", "content": ""}))
    sent = Sent()
    async for entry in entries:
        if entry is None:
            yield b": keepalive\n\n"
            continue
        piece = completion.absorb(entry)
        if completion.restarted and sent.any and not (completion.replayed and sent.replay()):
            # Text already sent cannot be taken back: end rather than repeat it (and the
            # answer is cancelled when the stream closes: see routes.py).
            completion.error = INTERRUPTED
            break
        completion.restarted = False
        if piece is not None and sent.repeats(piece):
            continue
        if piece is not None:
            if sent.diverged:
                completion.error, completion.restarted = INTERRUPTED, True
                break
            sent.add(piece)
            yield sse_data(completion.chunk(piece.delta, logprobs=piece.logprobs))
    if sent.echo and not (completion.error or completion.cancelled):
        completion.error = INTERRUPTED  # the answer ended short of the text sent
    if completion.error:
        _, code, message = completion.error
        yield sse_data(
            {"error": {"message": message, "type": "api_error", "param": None, "code": code}}
        )
    else:
        yield sse_data(completion.chunk({}, completion.finish_reason))
        if include_usage:
            yield sse_data(completion.usage_chunk())
    yield sse_data("[DONE]")

"""Turns a Chat Completions request into a chat job and our events into OpenAI objects."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from echotune.common.messages import ChatMessage, ChatOptions, Role
from echotune.common.providers import ProviderRegistry
from echotune.gateway.chat.relay import Entry
from echotune.gateway.chat.service import ChatInput
from echotune.gateway.errors import ApiError
from echotune.gateway.openai_compat.schemas import ChatCompletionRequest

# Our error codes → the HTTP status an OpenAI client expects for them.
ERROR_STATUS = {
    "rate_limited": 429,
    "deadline_exceeded": 504,
    "shutdown": 503,
    "worker_lost": 503,
    "no_worker": 503,
    "invalid_job": 500,
}


def resolve_model(registry: ProviderRegistry, model: str) -> tuple[str, str]:
    """Provider and model named by an OpenAI ``model`` string (see ``MODEL_RULE``)."""
    provider, _, name = model.partition("/")
    if name and provider in registry:
        return provider, name
    if config := registry.get(model):
        return config.name, config.model
    if config := registry.offering(model):
        return config.name, model
    raise ApiError(404, "model_not_found", f"The model `{model}` does not exist")


def to_chat_input(
    request: ChatCompletionRequest, request_id: str, user_id: str, registry: ProviderRegistry
) -> ChatInput:
    provider, model = resolve_model(registry, request.model)
    messages = [
        ChatMessage(role=Role.SYSTEM if m.role == "developer" else Role(m.role), content=m.text)
        for m in request.messages
    ]
    last = messages[-1]
    if last.role is not Role.USER:
        raise ApiError(400, "invalid_request", "the last message must come from the user")
    options = ChatOptions(
        temperature=request.temperature,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stop=request.stops(),
        use_context=False,
    )
    return ChatInput(
        request_id=request_id,
        user_id=user_id,
        message=last.content,
        provider=provider,
        model=model,
        options=options,
        history=tuple(messages[:-1]),
    )


@dataclass
class Completion:
    """Accumulates one answer from our events."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: tuple[int, str, str] | None = None
    restarted: bool = False
    """The answer started over (``discard_partial``): the text so far is void."""

    def absorb(self, entry: Entry) -> str | None:
        """Take in one event; the delta text it carries, if any."""
        data = json.loads(entry.data)
        if entry.type == "failover" and data.get("discard_partial"):
            self.text.clear()
            self.restarted = True
        elif entry.type == "delta":
            self.text.append(data["delta"])
            return str(data["delta"])
        if entry.type == "done":
            self.model = f"{data['provider']}/{data['model']}"
            self.finish_reason = (
                "stop" if data["finish_reason"] == "cancelled" else data["finish_reason"]
            )
            usage = data.get("usage") or {}
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            self.usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        elif entry.type == "error":
            status = ERROR_STATUS.get(data["code"], 502)
            self.error = (status, data["code"], data["message"])
        return None

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def usage_chunk(self) -> dict[str, Any]:
        return {**self.chunk({}), "choices": [], "usage": self.usage}

    def whole(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.text)},
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
        }


def sse_data(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


async def chunk_stream(
    completion: Completion, entries: AsyncIterator[Entry | None], include_usage: bool
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` frames: role first, then content, finish, usage, ``[DONE]``."""
    yield sse_data(completion.chunk({"role": "assistant", "content": ""}))
    sent = False
    async for entry in entries:
        if entry is None:
            yield b": keepalive\n\n"
            continue
        delta = completion.absorb(entry)
        if completion.restarted and sent:
            # Text already sent cannot be taken back: end rather than repeat it.
            completion.error = (503, "worker_lost", "the answer was interrupted; retry the request")
            break
        completion.restarted = False
        if delta:
            sent = True
            yield sse_data(completion.chunk({"content": delta}))
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

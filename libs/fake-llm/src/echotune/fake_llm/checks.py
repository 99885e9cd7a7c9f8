"""What the real APIs refuse with a 400, checked on every provider request the fake receives.

Unknown body fields, tool results that answer no call (or calls left unanswered), Anthropic tool
ids outside ``^[a-zA-Z0-9_-]+$`` and Gemini model turns whose first function call has no valid
``thoughtSignature`` are refused, as the real APIs do, so a test through the fake fails when the
worker sends what a real provider would not accept.
"""

from __future__ import annotations

import base64
import re
from typing import Any

OPENAI_FIELDS = frozenset(
    {
        "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "stop", "user", "n", "tools", "tool_choice",
        "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "seed",
        "presence_penalty", "frequency_penalty",
    }
)  # fmt: skip
ANTHROPIC_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "stream", "system", "temperature", "top_p", "top_k",
        "stop_sequences", "tools", "tool_choice", "metadata",
    }
)  # fmt: skip
GEMINI_FIELDS = frozenset(
    {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig", "safetySettings"}
)
GEMINI_CONFIG_FIELDS = frozenset(
    {
        "temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "candidateCount",
        "responseMimeType", "responseJsonSchema", "responseSchema", "seed", "presencePenalty",
        "frequencyPenalty", "responseLogprobs", "logprobs",
    }
)  # fmt: skip
ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
SKIP_SIGNATURE = "skip_thought_signature_validator"


def gemini_signature(name: str) -> str:
    """The thoughtSignature the fake gives a call of ``name`` (and expects back)."""
    return base64.b64encode(f"fake-thought:{name}".encode()).decode()


def openai_problem(body: dict[str, Any]) -> str | None:
    """Why OpenAI would refuse ``body``, or None."""
    if unknown := sorted(set(body) - OPENAI_FIELDS):
        return f"Unrecognized request argument supplied: {unknown[0]}"
    pending: set[str] = set()
    for index, message in enumerate(_dicts(body.get("messages"))):
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in pending:
                return f"messages.[{index}]: role 'tool' must answer a preceding tool_calls"
            pending.discard(message["tool_call_id"])
            continue
        if pending:
            return f"messages.[{index}]: tool_calls not answered: {sorted(pending)}"
        pending = {c.get("id") for c in _dicts(message.get("tool_calls"))}  # type: ignore[misc]
    return f"tool_calls not answered: {sorted(pending)}" if pending else None


def anthropic_problem(body: dict[str, Any]) -> str | None:
    """Why Anthropic would refuse ``body``, or None."""
    if unknown := sorted(set(body) - ANTHROPIC_FIELDS):
        return f"{unknown[0]}: Extra inputs are not permitted"
    if set(_dict(body.get("metadata"))) - {"user_id"}:
        return "metadata: only user_id is permitted"
    if "tool_choice" in body and not body.get("tools"):
        return "tool_choice may only be specified while providing tools"
    messages = _dicts(body.get("messages"))
    if not messages or messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    asked: set[str] = set()
    for index, message in enumerate(messages):
        blocks = _dicts(message.get("content"))
        if index and message.get("role") == messages[index - 1].get("role"):
            return f"messages.{index}: roles must alternate between user and assistant"
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if message.get("role") == "user" and answered != asked:
            return f"messages.{index}: tool_result blocks must answer the tool_use blocks before"
        asked = {b.get("id") for b in blocks if b.get("type") == "tool_use"}  # type: ignore[misc]
        if any(not ANTHROPIC_ID.fullmatch(str(i)) for i in asked):
            return f"messages.{index}: tool_use ids must match ^[a-zA-Z0-9_-]+$"
    return "tool_use blocks were not answered" if asked else None


def gemini_problem(body: dict[str, Any]) -> str | None:
    """Why Gemini would refuse ``body``, or None."""
    if unknown := sorted(set(body) - GEMINI_FIELDS):
        return f'Invalid JSON payload received. Unknown name "{unknown[0]}"'
    if unknown := sorted(set(_dict(body.get("generationConfig"))) - GEMINI_CONFIG_FIELDS):
        return f'Unknown name "{unknown[0]}" at generation_config'
    called: set[str] = set()
    for index, content in enumerate(_dicts(body.get("contents"))):
        if content.get("role") not in ("user", "model"):
            return f"contents[{index}]: role must be user or model"
        parts = _dicts(content.get("parts"))
        for part in parts:
            name = _dict(part.get("functionResponse")).get("name")
            if name is not None and name not in called:
                return f"contents[{index}]: functionResponse {name!r} answers no functionCall"
        calls = [part for part in parts if "functionCall" in part]
        if calls and not _signed(calls[0]):
            name = _dict(calls[0]["functionCall"]).get("name")
            return f"Function call {name!r} in content {index} is missing a thought_signature"
        called = {str(_dict(p["functionCall"]).get("name")) for p in calls}
    return None


def _signed(part: dict[str, Any]) -> bool:
    signature = part.get("thoughtSignature")
    name = str(_dict(part.get("functionCall")).get("name"))
    return signature in (SKIP_SIGNATURE, gemini_signature(name))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

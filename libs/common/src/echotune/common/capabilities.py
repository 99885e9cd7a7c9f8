"""What each provider kind can honour of a Chat Completions request.

The gateway refuses a request its chosen provider cannot honour (a 400 naming the field); the
worker skips fallbacks that cannot honour it. Nothing is ever silently dropped.

openai-kind providers take every field as is. anthropic: tools, tool choice, JSON output (a
forced tool), ``parallel_tool_calls``, ``top_p`` and ``user`` are translated; logprobs, seed and
penalties are refused. gemini: all translated except ``user`` and ``parallel_tool_calls:
false``. demo: sampling fields are accepted (its answers are not sampled), tools, JSON output,
logprobs and ``user`` refused. The README has the full table (keep both in step).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from echotune.common.completion import CompletionFeatures
from echotune.common.messages import ChatMessage, Role
from echotune.common.providers import ProviderKind

INT32 = 2**31
GEMINI_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")

# Request fields a kind has no equivalent for.
UNSUPPORTED: dict[ProviderKind, frozenset[str]] = {
    ProviderKind.OPENAI: frozenset(),
    ProviderKind.ANTHROPIC: frozenset(
        {"logprobs", "top_logprobs", "seed", "presence_penalty", "frequency_penalty"}
    ),
    ProviderKind.GEMINI: frozenset({"user"}),
    ProviderKind.DEMO: frozenset(
        {"tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "user"}
    ),
}
LOGPROB_KINDS = frozenset(kind for kind, fields in UNSUPPORTED.items() if "logprobs" not in fields)
"""Kinds that return token log-probabilities."""


# Values that ask for nothing beyond the default: honoured by every kind.
NEUTRAL: dict[str, object] = {
    "logprobs": False,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "parallel_tool_calls": True,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request field the provider cannot honour, and why."""

    param: str
    message: str


def refusals(
    kind: ProviderKind,
    features: CompletionFeatures | None,
    messages: Sequence[ChatMessage],
    temperature: float | None = None,
) -> list[Refusal]:
    """Everything of the request a provider of ``kind`` cannot honour (empty: all of it).

    ``temperature`` is checked only when given: the OpenAI door refuses above 1 for anthropic,
    while a fallback (and the SSE door) clamps it to 1, as it always did.
    """
    found = _history_refusals(kind, messages)
    if kind is ProviderKind.ANTHROPIC and temperature is not None and temperature > 1:
        found.append(Refusal("temperature", "anthropic providers take a temperature up to 1"))
    if features is None:
        return found
    set_fields = features.model_dump(exclude_none=True)
    found += [
        Refusal(name, f"`{name}` is not supported by {kind.value} providers")
        for name, value in set_fields.items()
        if name in UNSUPPORTED[kind] and (name not in NEUTRAL or value != NEUTRAL[name])
    ]
    return found + _feature_refusals(kind, features)


def _feature_refusals(kind: ProviderKind, features: CompletionFeatures) -> list[Refusal]:
    found: list[Refusal] = []
    wants_json = features.wants_json
    if wants_json and kind is ProviderKind.DEMO:
        found.append(Refusal("response_format", "the demo provider answers plain text only"))
    if wants_json and features.tools and kind in (ProviderKind.ANTHROPIC, ProviderKind.GEMINI):
        found.append(
            Refusal("response_format", f"{kind.value} providers cannot combine it with tools")
        )
    if kind is ProviderKind.ANTHROPIC:
        found += _anthropic_refusals(features)
    if kind in (ProviderKind.ANTHROPIC, ProviderKind.GEMINI):
        found += [
            Refusal(f"tools.{i}.function.strict", f"{kind.value} providers have no strict mode")
            for i, tool in enumerate(features.tools or [])
            if tool.function.strict
        ]
    if kind is ProviderKind.GEMINI:
        found += _gemini_refusals(features)
    return found


def _anthropic_refusals(features: CompletionFeatures) -> list[Refusal]:
    found: list[Refusal] = []
    json_schema = features.response_format.json_schema if features.response_format else None
    if json_schema is None:
        return found
    if json_schema.schema_ is not None and json_schema.schema_.get("type") != "object":
        found.append(
            Refusal(
                "response_format.json_schema.schema",
                "anthropic providers need a schema whose root is an object",
            )
        )
    if json_schema.strict:
        found.append(
            Refusal("response_format.json_schema.strict", "anthropic providers have no strict mode")
        )
    return found


def _gemini_refusals(features: CompletionFeatures) -> list[Refusal]:
    found: list[Refusal] = []
    if features.parallel_tool_calls is False:
        found.append(
            Refusal("parallel_tool_calls", "gemini providers cannot forbid parallel tool calls")
        )
    if features.seed is not None and not -INT32 <= features.seed < INT32:
        found.append(Refusal("seed", "gemini providers take a 32-bit seed"))
    for index, tool in enumerate(features.tools or []):
        if not GEMINI_NAME.fullmatch(tool.function.name):
            found.append(
                Refusal(
                    f"tools.{index}.function.name",
                    "gemini function names start with a letter or an underscore",
                )
            )
    return found


def _history_refusals(kind: ProviderKind, messages: Sequence[ChatMessage]) -> list[Refusal]:
    found: list[Refusal] = []
    for index, message in enumerate(messages):
        if kind is ProviderKind.DEMO and (message.tool_calls or message.role is Role.TOOL):
            found.append(Refusal(f"messages.{index}", "the demo provider does not take tool calls"))
            continue
        if kind is ProviderKind.OPENAI:
            continue
        for number, call in enumerate(message.tool_calls or []):
            if not _is_json_object(call.function.arguments):
                found.append(
                    Refusal(
                        f"messages.{index}.tool_calls.{number}.function.arguments",
                        f"{kind.value} providers need the arguments as a JSON object",
                    )
                )
    return found


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text or "{}"), dict)
    except ValueError:
        return False

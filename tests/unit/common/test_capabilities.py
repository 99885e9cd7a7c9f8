"""What each provider kind honours of a Chat Completions request (``capabilities.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from echotune.common.capabilities import refusals
from echotune.common.completion import CompletionFeatures
from echotune.common.messages import ChatMessage, Role
from echotune.common.providers import ProviderKind

OPENAI, ANTHROPIC, GEMINI, DEMO = (
    ProviderKind.OPENAI,
    ProviderKind.ANTHROPIC,
    ProviderKind.GEMINI,
    ProviderKind.DEMO,
)
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "find_album", "parameters": {"type": "object"}},
}
ASK = [ChatMessage(role=Role.USER, content="an album?")]
OBJECT_SCHEMA = {"name": "pick", "schema": {"type": "object"}}

# field values → the kinds that refuse them (every other kind honours them)
CASES: list[tuple[dict[str, Any], set[ProviderKind]]] = [
    ({"tools": [TOOL]}, {DEMO}),
    ({"tools": [TOOL], "tool_choice": "required"}, {DEMO}),
    ({"tools": [TOOL], "tool_choice": "none"}, {DEMO}),
    ({"tools": [TOOL], "parallel_tool_calls": True}, {DEMO}),
    ({"tools": [TOOL], "parallel_tool_calls": False}, {DEMO, GEMINI}),
    ({"response_format": {"type": "text"}}, set()),
    ({"response_format": {"type": "json_object"}}, {DEMO}),
    ({"response_format": {"type": "json_schema", "json_schema": OBJECT_SCHEMA}}, {DEMO}),
    ({"logprobs": True}, {ANTHROPIC, DEMO}),
    ({"logprobs": True, "top_logprobs": 3}, {ANTHROPIC, DEMO}),
    ({"seed": 7}, {ANTHROPIC}),
    ({"seed": 2**40}, {ANTHROPIC, GEMINI}),
    ({"presence_penalty": 0.5}, {ANTHROPIC}),
    ({"frequency_penalty": -0.5}, {ANTHROPIC}),
    ({"top_p": 0.9}, set()),
    ({"user": "end-user-42"}, {GEMINI, DEMO}),
    # values that ask for nothing beyond the default are honoured everywhere
    ({"logprobs": False}, set()),
    ({"presence_penalty": 0, "frequency_penalty": 0.0}, set()),
]


def params(kind: ProviderKind, features: dict[str, Any], messages: list[ChatMessage]) -> set[str]:
    model = CompletionFeatures.model_validate(features)
    return {refusal.param for refusal in refusals(kind, model, messages)}


@pytest.mark.parametrize(("features", "refused_by"), CASES)
def test_each_field_is_honoured_or_refused(
    features: dict[str, Any], refused_by: set[ProviderKind]
) -> None:
    for kind in ProviderKind:
        refused = params(kind, features, ASK)
        if kind in refused_by:
            assert refused, f"{kind} should refuse {features}"
            assert refused <= set(features) | {"response_format"}, refused
        else:
            assert not refused, f"{kind} should honour {features}: {refused}"


def test_json_output_with_tools_is_refused_where_it_is_a_forced_tool_or_unsupported() -> None:
    features = {"tools": [TOOL], "response_format": {"type": "json_object"}}
    assert params(OPENAI, features, ASK) == set()
    assert params(ANTHROPIC, features, ASK) == {"response_format"}
    assert params(GEMINI, features, ASK) == {"response_format"}


def test_anthropic_needs_an_object_schema_and_has_no_strict_mode() -> None:
    array = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}
    assert params(ANTHROPIC, {"response_format": array}, ASK) == {
        "response_format.json_schema.schema"
    }
    assert params(OPENAI, {"response_format": array}, ASK) == set()
    strict = {"type": "json_schema", "json_schema": {**OBJECT_SCHEMA, "strict": True}}
    assert params(ANTHROPIC, {"response_format": strict}, ASK) == {
        "response_format.json_schema.strict"
    }
    strict_tool = {**TOOL, "function": {**TOOL["function"], "strict": True}}
    for kind in (ANTHROPIC, GEMINI):
        assert params(kind, {"tools": [strict_tool]}, ASK) == {"tools.0.function.strict"}
    assert params(OPENAI, {"tools": [strict_tool]}, ASK) == set()


def test_gemini_function_names_must_start_with_a_letter() -> None:
    tool = {"type": "function", "function": {"name": "2nd-pick"}}
    assert params(GEMINI, {"tools": [tool]}, ASK) == {"tools.0.function.name"}
    assert params(OPENAI, {"tools": [tool]}, ASK) == set()


def test_tool_history() -> None:
    call = {"id": "call_1", "function": {"name": "find_album", "arguments": '{"q": "jazz"}'}}
    history = [
        *ASK,
        ChatMessage.model_validate({"role": "assistant", "content": "", "tool_calls": [call]}),
        ChatMessage(role=Role.TOOL, content="Kind of Blue", tool_call_id="call_1"),
    ]
    for kind in (OPENAI, ANTHROPIC, GEMINI):
        assert refusals(kind, None, history) == []
    assert {r.param for r in refusals(DEMO, None, history)} == {"messages.1", "messages.2"}
    not_an_object = {**call, "function": {"name": "find_album", "arguments": "[1]"}}
    history[1] = ChatMessage.model_validate(
        {"role": "assistant", "content": "", "tool_calls": [not_an_object]}
    )
    assert refusals(OPENAI, None, history) == []
    for kind in (ANTHROPIC, GEMINI):
        (refusal,) = refusals(kind, None, history)
        assert refusal.param == "messages.1.tool_calls.0.function.arguments"


def test_temperature_above_one_is_refused_by_anthropic_when_checked() -> None:
    assert [r.param for r in refusals(ANTHROPIC, None, ASK, 1.5)] == ["temperature"]
    assert refusals(ANTHROPIC, None, ASK, 1.0) == []
    assert refusals(ANTHROPIC, None, ASK) == [], "fallbacks clamp it instead"
    for kind in (OPENAI, GEMINI, DEMO):
        assert refusals(kind, None, ASK, 2.0) == []

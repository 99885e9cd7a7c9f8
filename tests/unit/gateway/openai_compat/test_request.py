"""The OpenAI door's request checks and translation, and how events become OpenAI objects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from echotune.common.messages import (
    DeltaEvent,
    DoneEvent,
    FinishReason,
    Role,
    Timings,
    encode_event,
)
from echotune.common.providers import ProviderConfig, ProviderKind, ProviderRegistry
from echotune.gateway.chat.relay import Entry
from echotune.gateway.openai_compat.request import to_chat_input
from echotune.gateway.openai_compat.schemas import ChatCompletionRequest
from echotune.gateway.openai_compat.service import Completion
from echotune.web.errors import ApiError

REGISTRY = ProviderRegistry(
    [
        ProviderConfig(name="oa", kind=ProviderKind.OPENAI, base_url="http://x/v1", models=["m"]),
        ProviderConfig(name="an", kind=ProviderKind.ANTHROPIC, base_url="http://x", models=["c"]),
        ProviderConfig(name="ge", kind=ProviderKind.GEMINI, base_url="http://x", models=["g"]),
    ]
)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
ASK = [{"role": "user", "content": "weather?"}]
ROUND_TRIP = [
    *ASK,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
]


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "oa/m", "messages": ASK, **fields})


def refused_param(**fields: Any) -> str | None:
    """The ``param`` of the 400 the request gets (None: accepted)."""
    try:
        to_chat_input(request(**fields), "req-00000001", "u", REGISTRY)
    except ApiError as error:
        refusal = error
    else:
        return None
    assert refusal.status == 400
    return ".".join(str(p) for p in refusal.details[0]["loc"])


# --- schema -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["logit_bias", "functions", "function_call", "metadata", "store", "modalities", "audio"],
)
def test_unknown_fields_are_refused_not_ignored(field: str) -> None:
    with pytest.raises(ValidationError) as error:
        request(**{field: {"x": 1}})
    assert error.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", True),
        ("max_tokens", "5"),
        ("stream", "yes"),
        ("temperature", "1"),
        ("stream_options", {"include_usage": "true"}),
    ],
)
def test_a_value_of_another_json_type_is_refused_not_converted(field: str, value: Any) -> None:
    """``"max_tokens": true`` was taken as 1 (a one-token answer), ``"stream": "yes"`` as
    true: nothing told the client its request was not what it meant."""
    with pytest.raises(ValidationError) as error:
        request(**{field: value})
    assert error.value.errors()[0]["loc"][0] == field


def test_null_counts_as_not_sent() -> None:
    parsed = request(logit_bias=None, tools=None, seed=None, user=None)
    assert parsed.tools is None
    message = {"role": "assistant", "content": "hi", "refusal": None, "audio": None}
    parsed = request(messages=[*ASK, message, *ASK])
    assert parsed.messages[1].text == "hi"


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": "x", "tool_call_id": "call_1"},
        {"role": "user", "content": "x", "tool_calls": [CALL]},
        {"role": "tool", "content": "x"},
        {"role": "assistant"},
        {"role": "user", "content": "x", "name": "alice"},
        {"role": "function", "content": "x", "name": "f"},
    ],
)
def test_message_fields_must_fit_the_role(message: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request(messages=[message])


# --- translation --------------------------------------------------------------------------


def test_a_tool_round_trip_becomes_the_job_messages() -> None:
    chat = to_chat_input(
        request(messages=ROUND_TRIP, tools=[TOOL], seed=3), "req-00000001", "u", REGISTRY
    )
    messages = chat.messages()
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert messages[1].tool_calls is not None
    assert messages[1].tool_calls[0].id == "call_1"
    assert messages[2].tool_call_id == "call_1"
    assert chat.final == messages[2]
    assert chat.message == "rain"
    assert chat.features is not None
    assert chat.features.seed == 3
    assert chat.features.tools is not None
    plain = to_chat_input(request(), "req-00000001", "u", REGISTRY)
    assert (plain.features, plain.final, plain.message) == (None, None, "weather?")


def test_developer_is_system() -> None:
    chat = to_chat_input(
        request(messages=[{"role": "developer", "content": "terse"}, *ASK]),
        "r-0000001",
        "u",
        REGISTRY,
    )
    assert chat.history[0].role is Role.SYSTEM


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"top_logprobs": 2, "logprobs": False}, "top_logprobs"),
        ({"messages": [*ASK, {"role": "assistant", "content": "hi"}]}, "messages.1.role"),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "x", "content": "r"}]},
            "messages.1.tool_call_id",
        ),
        ({"messages": ROUND_TRIP[:2] + ASK}, "messages.1.tool_calls"),
        ({"messages": [*ROUND_TRIP, ROUND_TRIP[2]]}, "messages.3.tool_call_id"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # was ignored
        ({"messages": [{"role": "user", "content": " \n"}]}, "messages.0.content"),  # was null
        ({"max_tokens": 2, "max_completion_tokens": 3}, "max_tokens"),  # was dropped
    ],
)
def test_inconsistent_requests_name_the_field(fields: dict[str, Any], param: str) -> None:
    assert refused_param(**fields) == param


@pytest.mark.parametrize("model", ["nope", "oa/nope"])
def test_a_model_no_provider_offers_is_404_model_not_found(model: str) -> None:
    """``provider/unknown`` passed here, then the chat service's check made it a 400."""
    body = ChatCompletionRequest.model_validate({"model": model, "messages": ASK})
    with pytest.raises(ApiError) as refused:
        to_chat_input(body, "r-0000001", "u", REGISTRY)
    assert (refused.value.status, refused.value.code) == (404, "model_not_found")


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        ("an/c", {"logprobs": True}, "logprobs"),
        ("an/c", {"seed": 1}, "seed"),
        ("an/c", {"presence_penalty": 1}, "presence_penalty"),
        ("an/c", {"temperature": 1.5}, "temperature"),
        ("ge/g", {"user": "x"}, "user"),
        ("ge/g", {"tools": [TOOL], "parallel_tool_calls": False}, "parallel_tool_calls"),
        ("demo", {"tools": [TOOL]}, "tools"),
        ("demo", {"response_format": {"type": "json_object"}}, "response_format"),
        ("demo", {"messages": ROUND_TRIP}, "messages.1"),
    ],
)
def test_what_the_provider_cannot_honour_is_refused(
    model: str, fields: dict[str, Any], param: str
) -> None:
    assert refused_param(model=model, **fields) == param
    assert refused_param(model="oa/m", **fields) is None


# --- events → OpenAI objects --------------------------------------------------------------


def entry(event: Any) -> Entry:
    fields = encode_event(event)
    return Entry("1-0", fields["type"], fields["data"])


def delta(**fields: Any) -> Entry:
    return entry(DeltaEvent.model_validate(fields))


def test_tool_call_pieces_stream_unchanged_and_add_up() -> None:
    completion = Completion(id="chatcmpl-1", model="oa/m")
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    pieces = [
        delta(tool_calls=[first]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]),
        delta(
            tool_calls=[{"index": 1, "id": "call_2", "type": "function", "function": {"name": "g"}}]
        ),
        delta(tool_calls=[{"index": 0, "function": {"arguments": " 1}"}}]),
    ]
    chunks = [completion.absorb(piece) for piece in pieces]
    assert chunks[0] is not None
    assert chunks[0].delta == {"tool_calls": [first]}
    done = DoneEvent(
        finish_reason=FinishReason.TOOL_CALLS, provider="oa", model="m", timings=Timings(total_ms=1)
    )
    completion.absorb(entry(done))
    (choice,) = completion.whole()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": '{"a": 1}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
        ],
    }
    assert choice["logprobs"] is None


def test_logprobs_ride_with_their_text() -> None:
    completion = Completion(id="chatcmpl-1", model="oa/m")
    token = {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}
    piece = completion.absorb(delta(delta="Hi", logprobs=[token]))
    assert piece is not None
    assert piece.delta == {"content": "Hi"}
    assert piece.logprobs == {"content": [token], "refusal": None}
    chunk = completion.chunk(piece.delta, logprobs=piece.logprobs)
    assert chunk["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
    assert json.loads(json.dumps(completion.whole()))["choices"][0]["logprobs"]["content"] == [
        token
    ]
    assert completion.whole()["choices"][0]["message"]["content"] == "Hi"


def test_max_completion_tokens_keeps_its_name_for_openai_providers() -> None:
    body = {"model": "oa/m", "messages": ASK, "max_completion_tokens": 100}
    chat = to_chat_input(ChatCompletionRequest.model_validate(body), "r-0000001", "u", REGISTRY)
    assert chat.features is not None
    assert (chat.features.max_completion_tokens, chat.options.max_tokens) == (100, 100)

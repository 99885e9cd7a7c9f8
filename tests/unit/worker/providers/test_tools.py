"""Tools, JSON output, logprobs and the other OpenAI fields: request translation per provider
kind, and the parsing of recorded tool-call and logprob streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from echotune.common.completion import CompletionFeatures, FunctionCallDelta, ToolCallDelta
from echotune.common.messages import ChatMessage, FinishReason, Role
from echotune.common.providers import ProviderKind
from echotune.worker.providers.base import Finish, StreamItem, TextChunk, ToolCallChunk
from echotune.worker.providers.gemini_request import SKIP_SIGNATURE
from tests.unit.worker.providers.test_parsers import (
    ANTHROPIC_STREAM,
    GEMINI_STREAM,
    OPENAI_STREAM,
    chat_request,
    collect,
    sse,
    texts,
)

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
RECORD = {"type": "function", "function": {"name": "record_pick"}}  # no parameters
SCHEMA = {"type": "object", "properties": {"album": {"type": "string"}}, "required": ["album"]}
CALL = {"id": "call_abc", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
GEMINI_ID = "call_g1__ts__c2lnbmF0dXJl+/=="
TOOL_HISTORY = [
    ChatMessage(role=Role.SYSTEM, content="You are EchoTune."),
    ChatMessage(role=Role.USER, content="Weather in Paris, then a matching album?"),
    ChatMessage.model_validate(
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [CALL, {**CALL, "id": GEMINI_ID}],
        }
    ),
    ChatMessage(role=Role.TOOL, content='{"sky": "rain"}', tool_call_id="call_abc"),
    ChatMessage(role=Role.TOOL, content="12 degrees", tool_call_id=GEMINI_ID),
]


def features(**values: Any) -> CompletionFeatures:
    return CompletionFeatures.model_validate(values)


async def sent(kind: ProviderKind, stream: str, **request: Any) -> dict[str, Any]:
    _, upstream = await collect(kind, lambda _: sse(stream), chat_request(**request))
    body: dict[str, Any] = json.loads(upstream.requests[0].content)
    return body


async def items_of(kind: ProviderKind, stream: str, **request: Any) -> list[StreamItem]:
    items, _ = await collect(kind, lambda _: sse(stream), chat_request(**request))
    return items


# --- openai: passed through -------------------------------------------------------------


async def test_openai_passes_every_field_through() -> None:
    wanted = {
        "tools": [WEATHER, RECORD],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": SCHEMA},
        },
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "top_p": 0.9,
        "user": "end-user-7",
    }
    body = await sent(ProviderKind.OPENAI, OPENAI_STREAM, features=features(**wanted))
    assert {key: body[key] for key in wanted} == wanted


@pytest.mark.parametrize("kind", [ProviderKind.ANTHROPIC, ProviderKind.GEMINI])
async def test_max_completion_tokens_goes_to_openai_by_its_name(kind: ProviderKind) -> None:
    """It went as ``max_tokens``, which OpenAI's reasoning models refuse; others take their own
    field from the options' ``max_tokens``."""
    wanted = features(max_completion_tokens=100)
    body = await sent(ProviderKind.OPENAI, OPENAI_STREAM, max_tokens=100, features=wanted)
    assert (body["max_completion_tokens"], "max_tokens" in body) == (100, False)
    stream = {ProviderKind.ANTHROPIC: ANTHROPIC_STREAM, ProviderKind.GEMINI: GEMINI_STREAM}[kind]
    body = await sent(kind, stream, max_tokens=100, features=wanted)
    assert "max_completion_tokens" not in json.dumps(body)
    assert "100" in json.dumps(body)


async def test_openai_history_with_tool_calls_goes_as_sent() -> None:
    body = await sent(ProviderKind.OPENAI, OPENAI_STREAM, messages=TOOL_HISTORY)
    assert body["messages"][2] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"type": "function", **CALL},
            {"type": "function", **CALL, "id": GEMINI_ID},
        ],
    }
    assert body["messages"][3] == {
        "role": "tool",
        "content": '{"sky": "rain"}',
        "tool_call_id": "call_abc",
    }
    only_calls = [*TOOL_HISTORY[:2], TOOL_HISTORY[2].model_copy(update={"content": ""})]
    body = await sent(ProviderKind.OPENAI, OPENAI_STREAM, messages=only_calls)
    assert body["messages"][2]["content"] is None


# --- anthropic: translated ----------------------------------------------------------------


async def test_anthropic_tools_and_history() -> None:
    body = await sent(
        ProviderKind.ANTHROPIC,
        ANTHROPIC_STREAM,
        messages=TOOL_HISTORY,
        features=features(tools=[WEATHER, RECORD], top_p=0.8, user="end-user-7"),
    )
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": WEATHER["function"]["parameters"],
        },
        {"name": "record_pick", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body
    assert body["top_p"] == 0.8
    assert body["metadata"] == {"user_id": "end-user-7"}
    assert body["system"] == "You are EchoTune."
    sanitized = "call_g1__ts__c2lnbmF0dXJl____"
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "call_abc",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": sanitized,
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_abc", "content": '{"sky": "rain"}'},
                {"type": "tool_result", "tool_use_id": sanitized, "content": "12 degrees"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, None),
    ],
)
async def test_anthropic_tool_choice(choice: Any, parallel: bool | None, expected: Any) -> None:
    wanted = features(tools=[WEATHER], tool_choice=choice, parallel_tool_calls=parallel)
    body = await sent(ProviderKind.ANTHROPIC, ANTHROPIC_STREAM, features=wanted)
    assert body.get("tool_choice") == expected


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        ({"type": "json_object"}, {"type": "object"}),
        ({"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA}}, SCHEMA),
    ],
)
async def test_anthropic_json_output_is_a_forced_tool(
    response_format: dict[str, Any], schema: dict[str, Any]
) -> None:
    wanted = features(response_format=response_format)
    body = await sent(ProviderKind.ANTHROPIC, ANTHROPIC_STREAM, features=wanted)
    (tool,) = body["tools"]
    assert (tool["name"], tool["input_schema"]) == ("json_answer", schema)
    assert body["tool_choice"] == {"type": "tool", "name": "json_answer"}


# --- gemini: translated -------------------------------------------------------------------


async def test_gemini_tools_and_generation_config() -> None:
    wanted = features(
        tools=[WEATHER, RECORD],
        tool_choice="required",
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
        logprobs=True,
        top_logprobs=3,
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        top_p=0.9,
    )
    body = await sent(ProviderKind.GEMINI, GEMINI_STREAM, features=wanted, temperature=0.2)
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parametersJsonSchema": WEATHER["function"]["parameters"],
                },
                {"name": "record_pick"},
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "responseMimeType": "application/json",
        "responseJsonSchema": SCHEMA,
        "responseLogprobs": True,
        "logprobs": 3,
        "seed": 42,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.25,
        "topP": 0.9,
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
async def test_gemini_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    body = await sent(
        ProviderKind.GEMINI, GEMINI_STREAM, features=features(tools=[WEATHER], tool_choice=choice)
    )
    assert body["toolConfig"] == {"functionCallingConfig": expected}


async def test_gemini_history_carries_names_and_thought_signatures() -> None:
    body = await sent(ProviderKind.GEMINI, GEMINI_STREAM, messages=TOOL_HISTORY)
    args = {"city": "Paris"}
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {
                    "functionCall": {"name": "get_weather", "args": args},
                    "thoughtSignature": SKIP_SIGNATURE,  # not from gemini: the sentinel
                },
                {
                    "functionCall": {"name": "get_weather", "args": args},
                    "thoughtSignature": "c2lnbmF0dXJl+/==",  # the one gemini gave
                },
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"sky": "rain"}}},
                {"functionResponse": {"name": "get_weather", "response": {"output": "12 degrees"}}},
            ],
        },
    ]


# --- streamed tool calls, JSON output and logprobs ----------------------------------------

_OA = '{"id":"chatcmpl-T","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
OPENAI_TOOL_STREAM = (
    f'data: {_OA}"choices":[{{"index":0,"delta":{{"role":"assistant","content":null,'
    '"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":'
    '"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}\n\n'
    f'data: {_OA}"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":'
    '{"arguments":"{\\"city\\":"}}]},"logprobs":null,"finish_reason":null}]}\n\n'
    f'data: {_OA}"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":'
    '{"arguments":"\\"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}]}\n\n'
    f'data: {_OA}"choices":[{{"index":0,"delta":{{}},"logprobs":null,'
    '"finish_reason":"tool_calls"}]}\n\n'
    "data: [DONE]\n\n"
)
ANTHROPIC_TOOL_STREAM = (
    "event: message_start\n"
    'data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    '"content":[],"model":"claude","stop_reason":null,"usage":{"input_tokens":30,"output_tokens":1}}}\n\n'
    "event: content_block_start\n"
    'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    '"text":"Checking."}}\n\n'
    "event: content_block_stop\n"
    'data: {"type":"content_block_stop","index":0}\n\n'
    "event: content_block_start\n"
    'data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
    '"id":"toolu_01A","name":"get_weather","input":{}}}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    '"partial_json":""}}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    '"partial_json":"{\\"city\\": \\"Par"}}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    '"partial_json":"is\\"}"}}\n\n'
    "event: content_block_stop\n"
    'data: {"type":"content_block_stop","index":1}\n\n'
    "event: content_block_start\n"
    'data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use",'
    '"id":"toolu_01B","name":"record_pick","input":{}}}\n\n'
    "event: content_block_stop\n"
    'data: {"type":"content_block_stop","index":2}\n\n'
    "event: message_delta\n"
    'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    '"usage":{"output_tokens":40}}\n\n'
    "event: message_stop\n"
    'data: {"type":"message_stop"}\n\n'
)
GEMINI_TOOL_STREAM = (
    'data: {"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather",'
    '"args":{"city":"Paris"}},"thoughtSignature":"c2ln"},{"functionCall":{"name":'
    '"record_pick","args":{}}}],"role":"model"},"finishReason":"STOP","index":0}],'
    '"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":5,"totalTokenCount":14}}\r\n\r\n'
)


def calls(items: list[StreamItem]) -> list[ToolCallDelta]:
    return [item.delta for item in items if isinstance(item, ToolCallChunk)]


def merged(items: list[StreamItem]) -> list[tuple[str | None, str | None, str]]:
    """(id, name, arguments) per call, the pieces joined."""
    whole: dict[int, list[Any]] = {}
    for delta in calls(items):
        entry = whole.setdefault(delta.index, [None, None, ""])
        entry[0] = delta.id or entry[0]
        function = delta.function or FunctionCallDelta()
        entry[1] = function.name or entry[1]
        entry[2] += function.arguments or ""
    return [(whole[i][0], whole[i][1], whole[i][2]) for i in sorted(whole)]


async def test_openai_tool_call_stream() -> None:
    items = await items_of(ProviderKind.OPENAI, OPENAI_TOOL_STREAM)
    assert calls(items)[0] == ToolCallDelta(
        index=0,
        id="call_abc",
        type="function",
        function=FunctionCallDelta(name="get_weather", arguments=""),
    )
    assert merged(items) == [("call_abc", "get_weather", '{"city":"Paris"}')]
    assert isinstance(items[-1], Finish)
    assert items[-1].reason is FinishReason.TOOL_CALLS


async def test_anthropic_tool_use_stream() -> None:
    items = await items_of(ProviderKind.ANTHROPIC, ANTHROPIC_TOOL_STREAM)
    assert texts(items) == ["Checking."]
    assert merged(items) == [
        ("toolu_01A", "get_weather", '{"city": "Paris"}'),
        ("toolu_01B", "record_pick", "{}"),  # no input at all: empty arguments, as OpenAI
    ]
    assert isinstance(items[-1], Finish)
    assert items[-1].reason is FinishReason.TOOL_CALLS


async def test_anthropic_json_mode_turns_the_forced_tool_into_text() -> None:
    stream = ANTHROPIC_TOOL_STREAM.replace('"get_weather"', '"json_answer"')
    wanted = features(response_format={"type": "json_object"})
    items = await items_of(ProviderKind.ANTHROPIC, stream, features=wanted)
    assert "".join(texts(items)) == 'Checking.{"city": "Paris"}'
    assert merged(items) == [("toolu_01B", "record_pick", "{}")]
    assert isinstance(items[-1], Finish)
    assert items[-1].reason is FinishReason.STOP


async def test_gemini_function_calls_carry_their_signature_in_the_id() -> None:
    items = await items_of(ProviderKind.GEMINI, GEMINI_TOOL_STREAM)
    (first, second) = merged(items)
    assert str(first[0]).endswith("__ts__c2ln")
    assert first[1:] == ("get_weather", '{"city": "Paris"}')
    assert second[1:] == ("record_pick", "{}")
    assert str(second[0]).startswith("call_")
    assert "__ts__" not in str(second[0])
    assert [d.index for d in calls(items)] == [0, 1]
    assert isinstance(items[-1], Finish)
    assert items[-1].reason is FinishReason.TOOL_CALLS


async def test_openai_logprobs_ride_on_the_text() -> None:
    entry = (
        '{"token":"Try","logprob":-0.25,"bytes":[84,114,121],"top_logprobs":'
        '[{"token":"Try","logprob":-0.25,"bytes":[84,114,121]},{"token":"Play","logprob":-1.5,'
        '"bytes":[80,108,97,121]}]}'
    )
    stream = OPENAI_STREAM.replace(
        '"delta":{"content":"Try"},"logprobs":null',
        f'"delta":{{"content":"Try"}},"logprobs":{{"content":[{entry}],"refusal":null}}',
    )
    items = await items_of(ProviderKind.OPENAI, stream)
    first = next(item for item in items if isinstance(item, TextChunk))
    assert first.text == "Try"
    (token,) = first.logprobs
    assert (token.token, token.logprob, token.bytes) == ("Try", -0.25, [84, 114, 121])
    assert [(t.token, t.logprob) for t in token.top_logprobs] == [("Try", -0.25), ("Play", -1.5)]


async def test_gemini_logprobs_in_openai_shape() -> None:
    result = (
        '"logprobsResult":{"topCandidates":[{"candidates":[{"token":"Try","tokenId":5,'
        '"logProbability":-0.5},{"token":"Go","tokenId":6,"logProbability":-2}]}],'
        '"chosenCandidates":[{"token":"Try","tokenId":5,"logProbability":-0.5}]},'
    )
    stream = GEMINI_STREAM.replace('"role": "model"},', '"role": "model"},' + result, 1)
    items = await items_of(ProviderKind.GEMINI, stream)
    first = next(item for item in items if isinstance(item, TextChunk))
    assert first.text == "Try"
    (token,) = first.logprobs
    assert (token.token, token.logprob, token.bytes) == ("Try", -0.5, [84, 114, 121])
    assert [(t.token, t.logprob) for t in token.top_logprobs] == [("Try", -0.5), ("Go", -2.0)]
    assert all(not item.logprobs for item in items[1:] if isinstance(item, TextChunk))

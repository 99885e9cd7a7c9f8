"""Tools, JSON output, logprobs and the other Chat Completions fields through the real stack,
driven by the unmodified `openai` SDK, for each provider kind of the fake upstream."""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from echotune.fake_llm import FakeUpstream
from echotune.fake_llm.checks import gemini_signature

MODELS = {
    "openai": "fake-openai/gpt-fake",
    "anthropic": "fake-anthropic/claude-fake",
    "gemini": "fake-gemini/gemini-fake",
}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK: Any = [{"role": "user", "content": "Music for the weather in Paris?"}]
ALBUM_SCHEMA = {
    "type": "object",
    "properties": {"album": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["album", "year"],
}
ALBUM = {"album": "Kind of Blue", "year": 1959}


def new_rid() -> str:
    return f"test-{uuid.uuid4().hex}"


def headers(rid: str) -> dict[str, str]:
    return {"X-Request-Id": rid}


async def sent(upstream: FakeUpstream, rid: str, count: int = 1) -> dict[str, Any]:
    """The body of the last provider request the fake saw for ``rid``."""
    body: dict[str, Any] = (await upstream.requests(rid, count=count))[-1]["json"]
    return body


def tool_result_in(kind: str, body: dict[str, Any]) -> Any:
    """The tool result as the provider of ``kind`` received it (its native form)."""
    if kind == "openai":
        return body["messages"][-1]
    if kind == "anthropic":
        return body["messages"][-1]["content"]
    return body["contents"][-1]["parts"]


# --- tool calls -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
async def test_tool_call_round_trip(sdk: AsyncOpenAI, upstream: FakeUpstream, kind: str) -> None:
    """call (streamed tool_calls deltas) -> tool result message -> final answer."""
    first, second = new_rid(), new_rid()
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    await upstream.script(first, {"tokens": ["Let me ", "check. "], "tool_calls": [call]})
    stream = await sdk.chat.completions.create(
        model=MODELS[kind], messages=ASK, tools=[WEATHER], stream=True, extra_headers=headers(first)
    )
    chunks = [chunk async for chunk in stream]
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    pieces = [piece for choice in choices for piece in choice.delta.tool_calls or []]
    assert pieces, "tool_calls deltas came through"
    head = pieces[0]
    assert (head.index, head.type) == (0, "function")
    assert head.function is not None
    assert head.function.name == "get_weather"
    assert head.id
    assert all(p.index == 0 and p.id is None for p in pieces[1:]), "later pieces: arguments only"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert "".join(c.delta.content or "" for c in choices) == "Let me check. "
    assert [c.finish_reason for c in choices if c.finish_reason] == ["tool_calls"]

    await upstream.script(second, {"tokens": ["Rain: ", "try ", "Kind of Blue."]})
    assistant = {
        "role": "assistant",
        "content": "Let me check. ",
        "tool_calls": [
            {
                "id": head.id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": arguments},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": head.id, "content": '{"sky": "rain"}'}
    answer = await sdk.chat.completions.create(
        model=MODELS[kind],
        messages=[*ASK, assistant, result],
        tools=[WEATHER],
        extra_headers=headers(second),
    )
    assert answer.choices[0].message.content == "Rain: try Kind of Blue."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None
    body = await sent(upstream, second)
    native = tool_result_in(kind, body)
    if kind == "openai":
        assert native == result
        assert body["tools"] == [WEATHER]
    elif kind == "anthropic":
        assert native == [
            {"type": "tool_result", "tool_use_id": head.id, "content": '{"sky": "rain"}'}
        ]
        assert body["messages"][-2]["content"][-1]["id"] == head.id
        assert body["tools"][0]["input_schema"] == WEATHER["function"]["parameters"]
    else:
        assert native == [
            {"functionResponse": {"name": "get_weather", "response": {"sky": "rain"}}}
        ]
        call_part = body["contents"][-2]["parts"][-1]
        assert call_part["thoughtSignature"] == gemini_signature("get_weather")
        assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"


@pytest.mark.parametrize("kind", MODELS)
async def test_non_streaming_returns_message_tool_calls(
    sdk: AsyncOpenAI, upstream: FakeUpstream, kind: str
) -> None:
    first, second = new_rid(), new_rid()
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
    ]
    await upstream.script(first, {"tokens": [], "tool_calls": calls})
    completion = await sdk.chat.completions.create(
        model=MODELS[kind], messages=ASK, tools=[WEATHER], extra_headers=headers(first)
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    made = [json.loads(c.function.arguments) for c in message.tool_calls if c.type == "function"]
    assert made == [{"city": "Paris"}, {"city": "Oslo"}]
    # the SDK's own message object goes back as history, with one result per call
    await upstream.script(second, {"tokens": ["Both rainy."]})
    results = [
        {"role": "tool", "tool_call_id": c.id, "content": "rain"} for c in message.tool_calls
    ]
    answer = await sdk.chat.completions.create(
        model=MODELS[kind],
        messages=[*ASK, message, *results],  # type: ignore[list-item]
        tools=[WEATHER],
        extra_headers=headers(second),
    )
    assert answer.choices[0].message.content == "Both rainy."


async def test_the_sdk_stream_helper_accumulates_tool_calls(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str
) -> None:
    await upstream.script(
        rid, {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]}
    )
    async with sdk.chat.completions.stream(
        model=MODELS["anthropic"], messages=ASK, tools=[WEATHER], extra_headers=headers(rid)
    ) as stream:
        final = await stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Rome"}
    assert call.id.startswith("toolu_")


@pytest.mark.parametrize(
    ("kind", "choice", "native"),
    [
        ("openai", "required", ("tool_choice", "required")),
        ("anthropic", "required", ("tool_choice", {"type": "any"})),
        ("gemini", "required", ("toolConfig", {"functionCallingConfig": {"mode": "ANY"}})),
        ("openai", "none", ("tool_choice", "none")),
        ("anthropic", "none", ("tool_choice", {"type": "none"})),
        ("gemini", "none", ("toolConfig", {"functionCallingConfig": {"mode": "NONE"}})),
    ],
)
async def test_tool_choice_reaches_the_provider(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str, kind: str, choice: Any, native: Any
) -> None:
    await upstream.script(rid, {"tokens": ["ok"]})
    await sdk.chat.completions.create(
        model=MODELS[kind],
        messages=ASK,
        tools=[WEATHER],
        tool_choice=choice,
        extra_headers=headers(rid),
    )
    field, value = native
    assert (await sent(upstream, rid))[field] == value


# --- JSON output ----------------------------------------------------------------------------

FORMATS: Any = {
    "json_object": {"type": "json_object"},
    "json_schema": {
        "type": "json_schema",
        "json_schema": {"name": "album", "schema": ALBUM_SCHEMA},
    },
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("form", FORMATS)
async def test_json_output(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str, kind: str, form: str
) -> None:
    # Paced: a burst would reach the client merged into one chunk (the worker coalesces).
    await upstream.script(rid, {"json": ALBUM, "pace_ms": 10})
    stream = await sdk.chat.completions.create(
        model=MODELS[kind],
        messages=[{"role": "user", "content": "One album as JSON"}],
        response_format=FORMATS[form],
        stream=True,
        extra_headers=headers(rid),
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == ALBUM
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "streamed"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    body = await sent(upstream, rid)
    schema = ALBUM_SCHEMA if form == "json_schema" else None
    if kind == "openai":
        assert body["response_format"] == FORMATS[form]
    elif kind == "anthropic":
        assert body["tool_choice"] == {"type": "tool", "name": "json_answer"}
        assert body["tools"][0]["input_schema"] == (schema or {"type": "object"})
    else:
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config.get("responseJsonSchema") == schema


class Album(BaseModel):
    album: str
    year: int


@pytest.mark.parametrize("kind", ["openai", "gemini"])
async def test_sdk_parse_with_a_pydantic_model(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str, kind: str
) -> None:
    """`parse` sends a strict json_schema; the answer comes back as the model."""
    await upstream.script(rid, {"json": ALBUM})
    completion = await sdk.chat.completions.parse(
        model=MODELS[kind], messages=ASK, response_format=Album, extra_headers=headers(rid)
    )
    assert completion.choices[0].message.parsed == Album(**ALBUM)


async def test_strict_schema_is_refused_where_it_cannot_be_kept(sdk: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.parse(
            model=MODELS["anthropic"], messages=ASK, response_format=Album
        )
    assert refused.value.body["param"] == "response_format.json_schema.strict"  # type: ignore[index]


# --- logprobs -------------------------------------------------------------------------------

TOKENS = ["Blue", " in", " Green"]
LOGPROBS = [-0.125, -0.5, -2.25]


@pytest.mark.parametrize("kind", ["openai", "gemini"])
async def test_logprobs_stream_and_whole(
    sdk: AsyncOpenAI, upstream: FakeUpstream, kind: str
) -> None:
    streamed, whole = new_rid(), new_rid()
    for rid in (streamed, whole):
        await upstream.script(rid, {"tokens": TOKENS, "logprobs": LOGPROBS})
    stream = await sdk.chat.completions.create(
        model=MODELS[kind],
        messages=ASK,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        extra_headers=headers(streamed),
    )
    chunks = [c async for c in stream]
    tokens = [
        token
        for c in chunks
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
        for token in c.choices[0].logprobs.content
    ]
    assert [(t.token, t.logprob) for t in tokens] == list(zip(TOKENS, LOGPROBS, strict=True))
    assert all(len(t.top_logprobs) == 2 for t in tokens)
    assert tokens[0].top_logprobs[1].logprob == LOGPROBS[0] - 1
    completion = await sdk.chat.completions.create(
        model=MODELS[kind], messages=ASK, logprobs=True, extra_headers=headers(whole)
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert [(t.token, t.logprob) for t in logprobs.content or []] == list(
        zip(TOKENS, LOGPROBS, strict=True)
    )
    body = await sent(upstream, whole)
    if kind == "openai":
        assert body["logprobs"] is True
    else:
        assert body["generationConfig"]["responseLogprobs"] is True


# --- the other fields ------------------------------------------------------------------------

SAMPLING: Any = {"seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5, "top_p": 0.9}


@pytest.mark.parametrize(
    ("kind", "fields", "native"),
    [
        ("openai", {**SAMPLING, "user": "end-user-7", "stop": ["END"]}, None),
        (
            "gemini",
            {**SAMPLING, "stop": ["END"]},
            {
                "generationConfig": {
                    "seed": 42,
                    "presencePenalty": 0.5,
                    "frequencyPenalty": -0.5,
                    "topP": 0.9,
                    "stopSequences": ["END"],
                }
            },
        ),
        (
            "anthropic",
            {"top_p": 0.9, "user": "end-user-7", "stop": ["END"]},
            {"top_p": 0.9, "metadata": {"user_id": "end-user-7"}, "stop_sequences": ["END"]},
        ),
        (
            "anthropic",
            {"tools": [WEATHER], "parallel_tool_calls": False},
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
        ),
        ("openai", {"tools": [WEATHER], "parallel_tool_calls": False}, None),
    ],
)
async def test_fields_take_effect_upstream(
    sdk: AsyncOpenAI,
    upstream: FakeUpstream,
    rid: str,
    kind: str,
    fields: dict[str, Any],
    native: dict[str, Any] | None,
) -> None:
    await upstream.script(rid, {"tokens": ["ok"]})
    await sdk.chat.completions.create(
        model=MODELS[kind], messages=ASK, extra_headers=headers(rid), **fields
    )
    body = await sent(upstream, rid)
    expected = native or fields  # openai kind: as sent
    for key, value in expected.items():
        if isinstance(value, dict) and key == "generationConfig":
            assert {k: body[key][k] for k in value} == value
        else:
            assert body[key] == value, key


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        (MODELS["anthropic"], {"logprobs": True}, "logprobs"),
        (MODELS["anthropic"], {"seed": 1}, "seed"),
        (MODELS["anthropic"], {"frequency_penalty": 1.0}, "frequency_penalty"),
        (MODELS["gemini"], {"user": "u"}, "user"),
        (
            MODELS["gemini"],
            {"tools": [WEATHER], "parallel_tool_calls": False},
            "parallel_tool_calls",
        ),
        ("demo", {"tools": [WEATHER]}, "tools"),
        ("demo", {"response_format": {"type": "json_object"}}, "response_format"),
        ("demo", {"logprobs": True}, "logprobs"),
        (MODELS["openai"], {"tool_choice": "auto"}, "tool_choice"),
        (MODELS["openai"], {"top_logprobs": 3}, "top_logprobs"),
        (MODELS["openai"], {"extra_body": {"logit_bias": {"1": 5}}}, "logit_bias"),
        (MODELS["openai"], {"extra_body": {"functions": [WEATHER["function"]]}}, "functions"),
    ],
)
async def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    sdk: AsyncOpenAI, upstream: FakeUpstream, rid: str, model: str, fields: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(
            model=model, messages=ASK, extra_headers=headers(rid), **fields
        )
    body: Any = refused.value.body
    assert body["param"] == param
    assert body["type"] == "invalid_request_error"
    assert await upstream.requests(rid, wait_s=0) == [], "nothing was sent upstream"

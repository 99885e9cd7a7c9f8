"""The fake upstream LLM server, driven over real HTTP by the real provider clients."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from echotune.common.completion import CompletionFeatures
from echotune.common.messages import ChatMessage, FinishReason, Role
from echotune.common.providers import ProviderConfig, ProviderKind
from echotune.fake_llm.server import (
    READY_PREFIX,
    FakeSettings,
    RunningFakeLLM,
    default_tokens,
    serve_fake_llm,
)
from echotune.worker.providers import build_provider
from echotune.worker.providers.base import (
    Finish,
    Provider,
    ProviderError,
    ProviderRequest,
    StreamItem,
    TextChunk,
    ToolCallChunk,
    make_client,
)

SECRET = "sk-fake-llm-SECRET-42"
DEFAULT_TOKENS = 8
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[RunningFakeLLM]:
    async with serve_fake_llm(FakeSettings(tokens=DEFAULT_TOKENS)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as client:
        yield client


@pytest.fixture
def rid() -> str:
    return f"fake-{uuid.uuid4().hex}"


def provider(
    fake: RunningFakeLLM, kind: ProviderKind, http: httpx.AsyncClient, **timeouts: float
) -> Provider:
    base = fake.openai_base_url if kind is ProviderKind.OPENAI else fake.url
    config = ProviderConfig(
        name=f"fake-{kind.value}",
        kind=kind,
        base_url=base,
        api_key=SECRET,
        models=["fake-model"],
        timeouts=timeouts or {},
    )
    return build_provider(config, http)


def request(rid: str, **overrides: Any) -> ProviderRequest:
    message = ChatMessage(role=Role.USER, content="play something calm")
    return ProviderRequest(rid, "fake-model", [message], **overrides)


async def script(fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str, *steps: Any) -> None:
    response = await http.put(f"{fake.url}/_control/scripts/{rid}", json={"attempts": steps})
    assert response.status_code == 200, response.text


async def records(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str, wait: float | None = None
) -> list[dict[str, Any]]:
    params = {"wait": str(wait)} if wait is not None else {}
    response = await http.get(f"{fake.url}/_control/requests/{rid}", params=params)
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()
    return result


async def drain(p: Provider, req: ProviderRequest) -> list[StreamItem]:
    return [item async for item in p.stream(req)]


async def items_and_error(
    stream: AsyncIterator[StreamItem],
) -> tuple[list[StreamItem], ProviderError]:
    seen: list[StreamItem] = []
    try:
        async for item in stream:
            seen.append(item)
    except ProviderError as error:
        return seen, error
    raise AssertionError(f"the stream did not fail: {seen}")


def text_of(items: list[StreamItem]) -> str:
    return "".join(i.text for i in items if isinstance(i, TextChunk))


@pytest.mark.parametrize("kind", [ProviderKind.OPENAI, ProviderKind.ANTHROPIC, ProviderKind.GEMINI])
async def test_default_answer_in_each_wire_format(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str, kind: ProviderKind
) -> None:
    items = await drain(provider(fake, kind, http), request(rid))
    assert text_of(items) == "".join(default_tokens(DEFAULT_TOKENS))
    finish = items[-1]
    assert isinstance(finish, Finish)
    assert finish.reason is FinishReason.STOP
    assert finish.usage.completion_tokens == DEFAULT_TOKENS
    assert finish.usage.prompt_tokens == 3
    (record,) = await records(fake, http, rid, wait=2)
    assert record["provider"] == kind.value
    assert record["headers"]["x-request-id"] == rid
    assert record["tokens_sent"] == DEFAULT_TOKENS
    assert record["text"] == "".join(default_tokens(DEFAULT_TOKENS))
    assert record["model"] == "fake-model"
    assert record["closed_by_client"] is False
    assert record["started_ns"] <= record["first_token_ns"] <= record["ended_ns"]
    assert abs(record["started_wall"] - time.time()) < 60
    assert record["concurrent_with"] == []


@pytest.mark.parametrize("kind", [ProviderKind.OPENAI, ProviderKind.ANTHROPIC, ProviderKind.GEMINI])
async def test_scripted_429_then_success(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str, kind: ProviderKind
) -> None:
    await script(fake, http, rid, {"status": 429, "retry_after": "1"}, {"tokens": ["Hi", " there"]})
    client = provider(fake, kind, http)
    with pytest.raises(ProviderError) as caught:
        await drain(client, request(rid))
    assert (caught.value.code, caught.value.status) == ("rate_limited", 429)
    assert caught.value.retry_after == 1.0
    items = await drain(client, request(rid))
    assert [i.text for i in items if isinstance(i, TextChunk)] == ["Hi", " there"]
    again = await drain(client, request(rid))  # the last step repeats
    assert text_of(again) == "Hi there"
    seen = await records(fake, http, rid)
    assert [r["status"] for r in seen] == [429, 200, 200]
    assert all(r["headers"]["x-request-id"] == rid for r in seen)
    assert SECRET in str(seen[0]["headers"])  # the key was sent, in the provider's header


async def test_retry_after_as_http_date(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str
) -> None:
    date = formatdate(time.time() + 20, usegmt=True)
    await script(fake, http, rid, {"status": 503, "retry_after": date})
    with pytest.raises(ProviderError) as caught:
        await drain(provider(fake, ProviderKind.GEMINI, http), request(rid))
    assert (caught.value.code, caught.value.status) == ("http_503", 503)
    assert caught.value.retry_after is not None
    assert 15 < caught.value.retry_after <= 21
    assert SECRET not in caught.value.message


async def test_disconnect_after(fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str) -> None:
    await script(fake, http, rid, {"disconnect_after": 2})
    stream = provider(fake, ProviderKind.ANTHROPIC, http).stream(request(rid))
    seen, error = await items_and_error(stream)
    assert error.code == "disconnected"
    assert text_of(seen) == "".join(default_tokens(2))
    (record,) = await records(fake, http, rid, wait=2)
    assert record["tokens_sent"] == 2
    assert record["text"] == "".join(default_tokens(2))
    assert record["closed_by_client"] is False
    assert record["outcome"] == "disconnected_by_server"


async def test_hang_then_client_closes(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str
) -> None:
    await script(fake, http, rid, {"hang_after": 1})
    stream = provider(fake, ProviderKind.GEMINI, http).stream(request(rid))
    first = await anext(stream)
    assert first == TextChunk(default_tokens(1)[0])
    closed_at = time.monotonic_ns()
    await stream.aclose()
    (attempt,) = await fake.app.wait_ended(rid, within_s=2)
    assert attempt.closed_by_client is True
    assert attempt.tokens_sent == 1
    assert attempt.ended_ns is not None
    assert 0 <= (attempt.ended_ns - closed_at) / 1e6 < 500
    (record,) = await records(fake, http, rid)
    assert record["closed_by_client"] is True
    assert record["outcome"] == "closed_by_client"


async def test_hang_hits_the_idle_timeout(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str
) -> None:
    await script(fake, http, rid, {"hang_after": 0})
    slow = provider(fake, ProviderKind.OPENAI, http, idle=0.2)
    with pytest.raises(ProviderError) as caught:
        await drain(slow, request(rid))
    assert caught.value.code == "timeout"
    (record,) = await records(fake, http, rid, wait=2)
    assert record["closed_by_client"] is True
    assert record["tokens_sent"] == 0


@pytest.mark.parametrize("kind", [ProviderKind.OPENAI, ProviderKind.ANTHROPIC, ProviderKind.GEMINI])
async def test_malformed_after(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str, kind: ProviderKind
) -> None:
    await script(fake, http, rid, {"malformed_after": 1})
    with pytest.raises(ProviderError) as caught:
        await drain(provider(fake, kind, http), request(rid))
    assert caught.value.code == "malformed_stream"


async def test_max_tokens_gives_length(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str
) -> None:
    items = await drain(provider(fake, ProviderKind.ANTHROPIC, http), request(rid, max_tokens=3))
    assert text_of(items) == "".join(default_tokens(3))
    assert items[-1] == Finish(FinishReason.LENGTH, items[-1].usage)  # type: ignore[union-attr]


async def test_stamped_tokens(fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str) -> None:
    await script(fake, http, rid, {"stamp": True, "token_count": 3, "pace_ms": 1})
    before = time.monotonic_ns()
    items = await drain(provider(fake, ProviderKind.OPENAI, http), request(rid))
    after = time.monotonic_ns()
    stamps = [int(i.text) for i in items if isinstance(i, TextChunk)]
    assert len(stamps) == 3
    assert before < stamps[0] < stamps[1] < stamps[2] < after


async def test_openai_non_streaming(fake: RunningFakeLLM, http: httpx.AsyncClient) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    response = await http.post(f"{fake.openai_base_url}/chat/completions", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "".join(default_tokens(DEFAULT_TOKENS))
    assert answer["usage"]["completion_tokens"] == DEFAULT_TOKENS


async def test_overlapping_attempts_of_one_key_are_recorded(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str
) -> None:
    await script(fake, http, rid, {"token_count": 3, "pace_ms": 100})
    client = provider(fake, ProviderKind.OPENAI, http)
    first = asyncio.create_task(drain(client, request(rid)))
    await fake.app.wait_ended(rid, within_s=2, ended=False)
    await drain(client, request(rid))
    await first
    one, two = await records(fake, http, rid, wait=2)
    assert (one["concurrent_with"], two["concurrent_with"]) == ([], [0])


async def test_an_attempt_closed_just_before_the_next_is_not_overlapping(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str
) -> None:
    await script(fake, http, rid, {"hang_after": 1}, {"token_count": 1})
    client = provider(fake, ProviderKind.OPENAI, http)
    for _ in range(5):  # the server may hear of the close after the next request arrived
        stream = client.stream(request(rid))
        await anext(stream)
        await stream.aclose()
        await drain(client, request(rid))
        await script(fake, http, rid, {"hang_after": 1}, {"token_count": 1})
    attempts = await records(fake, http, rid, wait=2)
    assert len(attempts) == 10
    assert [a["concurrent_with"] for a in attempts] == [[]] * 10


async def test_an_outage_answers_every_request_for_a_model(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str
) -> None:
    await script(fake, http, rid, {"tokens": ["scripted"]})
    put = await http.put(f"{fake.url}/_control/outages/fake-model", json={"for_s": 30})
    assert put.status_code == 200
    client = provider(fake, ProviderKind.GEMINI, http)
    with pytest.raises(ProviderError) as caught:
        await drain(client, request(rid))
    assert caught.value.status == 503
    assert (await http.delete(f"{fake.url}/_control/outages/fake-model")).status_code == 200
    assert text_of(await drain(client, request(rid))) == "scripted"
    down, up = await records(fake, http, rid, wait=2)
    assert (down["outage"], up["outage"]) == (True, False)
    bad = await http.put(f"{fake.url}/_control/outages/fake-model", json={"step": {}})
    assert bad.status_code == 400


async def test_control_api(fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str) -> None:
    assert (await http.get(f"{fake.url}/_control/health")).json() == {"ok": True}
    bad = await http.put(f"{fake.url}/_control/scripts/{rid}", json={"attempts": [{"x": 1}]})
    assert bad.status_code == 400
    default = await http.put(f"{fake.url}/_control/default", json={"tokens": ["only"]})
    assert default.status_code == 200
    anonymous = await http.post(f"{fake.openai_base_url}/chat/completions", json={"stream": False})
    assert anonymous.json()["choices"][0]["message"]["content"] == "only"
    everything = (await http.get(f"{fake.url}/_control/requests")).json()
    assert everything["-"][-1]["json"] == {"stream": False}
    assert (await http.delete(f"{fake.url}/_control")).json() == {"ok": True}
    assert (await http.get(f"{fake.url}/_control/requests")).json() == {}


async def test_many_concurrent_streams(fake: RunningFakeLLM, http: httpx.AsyncClient) -> None:
    client = provider(fake, ProviderKind.OPENAI, http)
    results = await asyncio.gather(
        *(drain(client, request(f"many-{i:04d}-{uuid.uuid4().hex[:6]}")) for i in range(200))
    )
    assert all(isinstance(items[-1], Finish) for items in results)
    assert {text_of(items) for items in results} == {"".join(default_tokens(DEFAULT_TOKENS))}


HTTP_KINDS = [ProviderKind.OPENAI, ProviderKind.ANTHROPIC, ProviderKind.GEMINI]
WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def tool_calls_of(items: list[StreamItem]) -> list[tuple[str, str]]:
    """(name, arguments) per streamed call, its pieces joined."""
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for item in items:
        if isinstance(item, ToolCallChunk) and item.delta.function is not None:
            index = item.delta.index
            names[index] = item.delta.function.name or names.get(index, "")
            arguments[index] = arguments.get(index, "") + (item.delta.function.arguments or "")
    return [(names[i], arguments[i]) for i in sorted(names)]


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_tool_calls_in_each_wire_format(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str, kind: ProviderKind
) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    ]
    await script(fake, http, rid, {"tokens": ["Checking. "], "tool_calls": calls})
    features = CompletionFeatures.model_validate({"tools": [WEATHER]})
    items = await drain(provider(fake, kind, http), request(rid, features=features))
    assert text_of(items) == "Checking. "
    assert [(name, json.loads(args)) for name, args in tool_calls_of(items)] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    assert items[-1] == Finish(FinishReason.TOOL_CALLS, items[-1].usage)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_json_mode_in_each_wire_format(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str, kind: ProviderKind
) -> None:
    await script(fake, http, rid, {"json": {"album": "Blue", "tracks": [1, 2]}})
    features = CompletionFeatures.model_validate({"response_format": {"type": "json_object"}})
    items = await drain(provider(fake, kind, http), request(rid, features=features))
    assert json.loads(text_of(items)) == {"album": "Blue", "tracks": [1, 2]}
    assert sum(isinstance(i, TextChunk) for i in items) > 1, "the document streams in pieces"
    assert tool_calls_of(items) == []
    default = await drain(provider(fake, kind, http), request(f"{rid}-d", features=features))
    assert json.loads(text_of(default)) == {
        "answer": "".join(default_tokens(DEFAULT_TOKENS)).strip()
    }


@pytest.mark.parametrize("kind", [ProviderKind.OPENAI, ProviderKind.GEMINI])
async def test_logprobs_when_asked(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str, kind: ProviderKind
) -> None:
    await script(fake, http, rid, {"tokens": ["a", "b", "c"], "logprobs": [-1.5]})
    features = CompletionFeatures.model_validate({"logprobs": True, "top_logprobs": 3})
    items = await drain(provider(fake, kind, http), request(rid, features=features))
    tokens = [t for i in items if isinstance(i, TextChunk) for t in i.logprobs]
    assert [(t.token, t.logprob) for t in tokens] == [("a", -1.5), ("b", -0.2), ("c", -0.3)]
    assert [(t.token, t.logprob) for t in tokens[0].top_logprobs] == [
        ("a", -1.5),
        ("alt1", -2.5),
        ("alt2", -3.5),
    ]
    plain = await drain(provider(fake, kind, http), request(f"{rid}-p"))
    assert all(not i.logprobs for i in plain if isinstance(i, TextChunk))


ANTHROPIC_ASK = {"model": "m", "max_tokens": 5, "stream": True}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
GEMINI_CALL = {"functionCall": {"name": "f", "args": {}}}


@pytest.mark.parametrize(
    ("path", "body", "complaint"),
    [
        ("/v1/chat/completions", {"messages": [], "logit_bias": {}}, "logit_bias"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "tool", "tool_call_id": "x", "content": "r"}]},
            "role 'tool'",
        ),
        ("/v1/messages", {**ANTHROPIC_ASK, "seed": 1, "messages": []}, "seed"),
        (
            "/v1/messages",
            {
                **ANTHROPIC_ASK,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [TOOL_USE]},
                    {"role": "user", "content": "no result"},
                ],
            },
            "tool_result",
        ),
        (
            "/v1/messages",
            {**ANTHROPIC_ASK, "messages": [{"role": "assistant", "content": "first"}]},
            "first message",
        ),
        (
            "/v1beta/models/m:streamGenerateContent?alt=sse",
            {"contents": [{"role": "model", "parts": [GEMINI_CALL]}]},
            "thought_signature",
        ),
        (
            "/v1beta/models/m:streamGenerateContent?alt=sse",
            {"contents": [], "generationConfig": {"user": "x"}},
            "user",
        ),
    ],
)
async def test_refuses_what_the_real_api_refuses(
    fake: RunningFakeLLM, http: httpx.AsyncClient, path: str, body: Any, complaint: str
) -> None:
    response = await http.post(f"{fake.url}{path}", json=body)
    assert response.status_code == 400
    assert complaint in json.dumps(response.json())


async def test_bad_scripted_tool_calls_are_refused(
    fake: RunningFakeLLM, http: httpx.AsyncClient, rid: str
) -> None:
    for step in ({"tool_calls": [{"arguments": "{}"}]}, {"logprobs": ["x"]}):
        response = await http.put(f"{fake.url}/_control/scripts/{rid}", json={"attempts": [step]})
        assert response.status_code == 400


async def test_cli_announces_its_port() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "echotune.fake_llm",
        "--port",
        "0",
        "--tokens",
        "2",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode().strip()
        assert line.startswith(f"{READY_PREFIX} port=")
        port = int(line.split("=", 1)[1])
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{port}/_control/health")
        assert health.json() == {"ok": True}
    finally:
        proc.terminate()
        await proc.wait()

"""Provider clients against recorded wire streams served by ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from echotune.common.messages import ChatMessage, FinishReason, Role, Usage
from echotune.common.providers import ProviderConfig, ProviderKind
from echotune.worker.providers import (
    AnthropicProvider,
    DemoProvider,
    GeminiProvider,
    OpenAIProvider,
    build_provider,
)
from echotune.worker.providers.base import (
    Finish,
    Provider,
    ProviderError,
    ProviderRequest,
    StreamItem,
    TextChunk,
)
from echotune.worker.providers.demo import tokenize
from echotune.worker.providers.errors import parse_retry_after

SECRET = "sk-unit-SECRET-0123456789abcdef"
HTTP_KINDS = [ProviderKind.OPENAI, ProviderKind.ANTHROPIC, ProviderKind.GEMINI]
BASE_URLS = {
    ProviderKind.OPENAI: "http://upstream.test/v1",
    ProviderKind.ANTHROPIC: "http://upstream.test",
    ProviderKind.GEMINI: "http://upstream.test",
}

# --- recorded streams (shapes as the real APIs send them) ----------------------------------

_OA = (
    '{"id":"chatcmpl-AbC1","object":"chat.completion.chunk","created":1731000000,'
    '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1",'
)
OPENAI_STREAM = (
    ": OPENROUTER PROCESSING\n\n"
    f'data: {_OA}"choices":[{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},'
    '"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    f'data: {_OA}"choices":[{{"index":0,"delta":{{"content":"Try"}},"logprobs":null,'
    '"finish_reason":null}],"usage":null}\n\n'
    f'data: {_OA}"choices":[{{"index":0,"delta":{{"content":" some jazz"}},"logprobs":null,'
    '"finish_reason":null}],"usage":null}\n\n'
    f'data: {_OA}"choices":[{{"index":0,"delta":{{"content":"."}},"logprobs":null,'
    '"finish_reason":null}],"usage":null}\n\n'
    f'data: {_OA}"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],'
    '"usage":null}\n\n'
    f'data: {_OA}"choices":[],"usage":{{"prompt_tokens":12,"completion_tokens":4,'
    '"total_tokens":16,"prompt_tokens_details":{"cached_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0}}}\n\n'
    "data: [DONE]\n\n"
)
ANTHROPIC_STREAM = (
    "event: message_start\n"
    'data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL",'
    '"type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5",'
    '"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    "event: content_block_start\n"
    'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    "event: ping\n"
    'data: {"type": "ping"}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Try"}}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":" some jazz."}}\n\n'
    "event: content_block_stop\n"
    'data: {"type":"content_block_stop","index":0}\n\n'
    "event: message_delta\n"
    'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    '"usage":{"output_tokens":15}}\n\n'
    "event: message_stop\n"
    'data: {"type":"message_stop"}\n\n'
)


def _gemini_chunk(text: str, finish: str | None = None, usage: str = "") -> str:
    reason = f'"finishReason": "{finish}",' if finish else ""
    meta = usage or '"promptTokenCount": 9,"totalTokenCount": 9'
    return (
        f'data: {{"candidates": [{{"content": {{"parts": [{{"text": {json.dumps(text)}}}],'
        f'"role": "model"}},{reason}"index": 0}}],"usageMetadata": {{{meta}}},'
        '"modelVersion": "gemini-2.0-flash","responseId": "abc123"}\r\n\r\n'
    )


GEMINI_STREAM = (
    _gemini_chunk("Try")
    + _gemini_chunk(" some jazz")
    + _gemini_chunk(
        ".",
        "STOP",
        '"promptTokenCount": 9,"candidatesTokenCount": 4,"totalTokenCount": 13,'
        '"promptTokensDetails": [{"modality": "TEXT","tokenCount": 9}]',
    )
)
RECORDED = {
    ProviderKind.OPENAI: (OPENAI_STREAM, Usage(prompt_tokens=12, completion_tokens=4)),
    ProviderKind.ANTHROPIC: (ANTHROPIC_STREAM, Usage(prompt_tokens=25, completion_tokens=15)),
    ProviderKind.GEMINI: (GEMINI_STREAM, Usage(prompt_tokens=9, completion_tokens=4)),
}
# The recorded streams cut before their end marker (the body ends cleanly).
TRUNCATED = {
    ProviderKind.OPENAI: OPENAI_STREAM[
        : OPENAI_STREAM.index('data: {"id"', OPENAI_STREAM.index("jazz"))
    ],
    ProviderKind.ANTHROPIC: ANTHROPIC_STREAM.split("event: message_stop")[0],
    ProviderKind.GEMINI: _gemini_chunk("Try") + _gemini_chunk(" some jazz"),
}
GARBAGE = {
    ProviderKind.OPENAI: "data: {not json\n\n",
    ProviderKind.ANTHROPIC: "event: content_block_delta\ndata: {not json\n\n",
    ProviderKind.GEMINI: "data: [1, 2\r\n\r\n",
}

# --- helpers -----------------------------------------------------------------------------


class ChunkedStream(httpx.AsyncByteStream):
    """A response body delivered in small pieces, optionally failing at the end."""

    def __init__(self, body: bytes, size: int = 7, fail: Exception | None = None) -> None:
        self.body, self.size, self.fail = body, size, fail
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            yield self.body[start : start + self.size]
        if self.fail is not None:
            raise self.fail

    async def aclose(self) -> None:
        self.closed = True


def sse(body: str, status: int = 200, **kwargs: Any) -> httpx.Response:
    """A streamed ``text/event-stream`` response."""
    headers = {"content-type": "text/event-stream; charset=utf-8"}
    return httpx.Response(status, headers=headers, stream=ChunkedStream(body.encode(), **kwargs))


def config_for(kind: ProviderKind, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "name": f"up-{kind.value}",
        "kind": kind,
        "base_url": BASE_URLS[kind],
        "api_key": SECRET,
        "models": ["model-1"],
    }
    return ProviderConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    "base_url", ["http://upstream.test/v1?api-version=1", "http://u.test/#v1", "http://u.test/v1?"]
)
def test_a_base_url_with_a_query_or_fragment_is_refused(base_url: str) -> None:
    """The API path is appended to the base URL: after a query or fragment it would land in
    it (and httpx dropped the query of every request)."""
    with pytest.raises(ValidationError, match="query or fragment"):
        config_for(ProviderKind.OPENAI, base_url=base_url)


def chat_request(**overrides: Any) -> ProviderRequest:
    values: dict[str, Any] = {
        "request_id": "req-0123456789",
        "model": "model-1",
        "messages": [
            ChatMessage(role=Role.SYSTEM, content="You are EchoTune."),
            ChatMessage(role=Role.USER, content="Suggest jazz"),
            ChatMessage(role=Role.ASSISTANT, content="Sure."),
            ChatMessage(role=Role.USER, content="Something calm"),
        ],
    }
    return ProviderRequest(**{**values, **overrides})


class Upstream:
    """Records the requests; answers each with ``reply(request)``."""

    def __init__(self, reply: Callable[[httpx.Request], httpx.Response]) -> None:
        self.reply = reply
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.reply(request)


async def collect(
    kind: ProviderKind,
    reply: Callable[[httpx.Request], httpx.Response],
    request: ProviderRequest | None = None,
    **config: Any,
) -> tuple[list[StreamItem], Upstream]:
    upstream = Upstream(reply)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        provider = build_provider(config_for(kind, **config), client)
        items = [item async for item in provider.stream(request or chat_request())]
    return items, upstream


async def items_and_error(
    stream: AsyncIterator[StreamItem],
) -> tuple[list[StreamItem], ProviderError]:
    """The items a stream yields before it fails, and its ProviderError."""
    seen: list[StreamItem] = []
    try:
        async for item in stream:
            seen.append(item)
    except ProviderError as error:
        return seen, error
    raise AssertionError(f"the stream did not fail: {seen}")


async def failure(
    kind: ProviderKind, reply: Callable[[httpx.Request], httpx.Response]
) -> tuple[ProviderError, list[StreamItem]]:
    upstream = Upstream(reply)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        provider = build_provider(config_for(kind), client)
        seen, error = await items_and_error(provider.stream(chat_request()))
    assert SECRET not in error.message
    return error, seen


def texts(items: list[StreamItem]) -> list[str]:
    return [item.text for item in items if isinstance(item, TextChunk)]


# --- happy paths -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_recorded_stream_gives_text_then_finish(kind: ProviderKind) -> None:
    body, usage = RECORDED[kind]
    items, _ = await collect(kind, lambda _: sse(body))
    assert "".join(texts(items)) == "Try some jazz."
    assert all(item.text for item in items if isinstance(item, TextChunk))
    assert items[-1] == Finish(FinishReason.STOP, usage)
    assert sum(isinstance(item, Finish) for item in items) == 1


async def test_openai_request_shape() -> None:
    request = chat_request(temperature=0.3, max_tokens=50, stop=["END"])
    _, upstream = await collect(ProviderKind.OPENAI, lambda _: sse(OPENAI_STREAM), request)
    (sent,) = upstream.requests
    assert str(sent.url) == "http://upstream.test/v1/chat/completions"
    assert sent.headers["x-request-id"] == "req-0123456789"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    body = json.loads(sent.content)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "You are EchoTune."}
    assert (body["temperature"], body["max_tokens"], body["stop"]) == (0.3, 50, ["END"])


async def test_anthropic_request_shape() -> None:
    _, upstream = await collect(ProviderKind.ANTHROPIC, lambda _: sse(ANTHROPIC_STREAM))
    (sent,) = upstream.requests
    assert str(sent.url) == "http://upstream.test/v1/messages"
    assert sent.headers["x-api-key"] == SECRET
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["x-request-id"] == "req-0123456789"
    body = json.loads(sent.content)
    assert body["system"] == "You are EchoTune."
    assert body["max_tokens"] == 1024
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


async def test_anthropic_base_url_with_v1_is_not_doubled() -> None:
    _, upstream = await collect(
        ProviderKind.ANTHROPIC, lambda _: sse(ANTHROPIC_STREAM), base_url="http://up.test/v1/"
    )
    assert str(upstream.requests[0].url) == "http://up.test/v1/messages"


async def test_gemini_request_shape() -> None:
    request = chat_request(temperature=0.5, max_tokens=64, stop=["END"])
    _, upstream = await collect(ProviderKind.GEMINI, lambda _: sse(GEMINI_STREAM), request)
    (sent,) = upstream.requests
    assert (
        str(sent.url) == "http://upstream.test/v1beta/models/model-1:streamGenerateContent?alt=sse"
    )
    assert sent.headers["x-goog-api-key"] == SECRET
    assert sent.headers["x-request-id"] == "req-0123456789"
    assert SECRET not in str(sent.url)
    body = json.loads(sent.content)
    assert body["systemInstruction"] == {"parts": [{"text": "You are EchoTune."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["generationConfig"] == {
        "temperature": 0.5,
        "maxOutputTokens": 64,
        "stopSequences": ["END"],
    }


@pytest.mark.parametrize(
    ("kind", "body", "reason"),
    [
        (ProviderKind.OPENAI, OPENAI_STREAM.replace('"stop"', '"length"'), FinishReason.LENGTH),
        (
            ProviderKind.OPENAI,
            OPENAI_STREAM.replace('"stop"', '"content_filter"'),
            FinishReason.CONTENT_FILTER,
        ),
        (
            ProviderKind.ANTHROPIC,
            ANTHROPIC_STREAM.replace("end_turn", "max_tokens"),
            FinishReason.LENGTH,
        ),
        (
            ProviderKind.ANTHROPIC,
            ANTHROPIC_STREAM.replace("end_turn", "stop_sequence"),
            FinishReason.STOP,
        ),
        (ProviderKind.GEMINI, GEMINI_STREAM.replace("STOP", "MAX_TOKENS"), FinishReason.LENGTH),
        (ProviderKind.GEMINI, GEMINI_STREAM.replace("STOP", "SAFETY"), FinishReason.CONTENT_FILTER),
    ],
)
async def test_finish_reasons(kind: ProviderKind, body: str, reason: FinishReason) -> None:
    items, _ = await collect(kind, lambda _: sse(body))
    finish = items[-1]
    assert isinstance(finish, Finish)
    assert finish.reason is reason


async def test_no_api_key_sends_no_auth_header() -> None:
    _, upstream = await collect(ProviderKind.OPENAI, lambda _: sse(OPENAI_STREAM), api_key=None)
    assert "authorization" not in upstream.requests[0].headers


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", HTTP_KINDS)
@pytest.mark.parametrize(
    ("status", "headers", "code", "retry_after"),
    [
        (429, {"retry-after": "7"}, "rate_limited", 7.0),
        (429, {"retry-after": "soon"}, "rate_limited", None),
        (429, {}, "rate_limited", None),
        (500, {}, "http_500", None),
        (503, {"retry-after": "2"}, "http_503", 2.0),
        (529, {}, "http_529", None),
    ],
)
async def test_error_status(
    kind: ProviderKind,
    status: int,
    headers: dict[str, str],
    code: str,
    retry_after: float | None,
) -> None:
    body = {"error": {"message": f"boom (key {SECRET})"}}
    error, _ = await failure(kind, lambda _: httpx.Response(status, json=body, headers=headers))
    assert (error.code, error.status, error.retry_after) == (code, status, retry_after)
    assert "boom" in error.message
    assert "***" in error.message


async def test_retry_after_http_date() -> None:
    date = formatdate(time.time() + 30, usegmt=True)
    reply = lambda _: httpx.Response(429, headers={"retry-after": date})  # noqa: E731
    error, _ = await failure(ProviderKind.OPENAI, reply)
    assert error.code == "rate_limited"
    assert error.retry_after is not None
    assert 25 <= error.retry_after <= 31


async def test_error_body_is_bounded_and_a_cut_key_is_masked() -> None:
    raw = "x" * 4085 + SECRET + "y" * 100_000  # the 4 KiB limit cuts inside the key
    error, _ = await failure(ProviderKind.ANTHROPIC, lambda _: httpx.Response(401, text=raw))
    assert error.code == "http_401"
    assert SECRET[:8] not in error.message
    assert len(error.message) <= 400


@pytest.mark.parametrize("value", ["120", " 3 ", "1.5"])
def test_parse_retry_after_seconds(value: str) -> None:
    assert parse_retry_after(value) == float(value)


def test_parse_retry_after_dates_and_junk() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == 90.0
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0.0
    for junk in (None, "", "-1", "nan", "inf", "tomorrow", "Mon, 99 Foo 2024"):
        assert parse_retry_after(junk) is None


async def test_gemini_retry_info_body() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}],
        }
    }
    error, _ = await failure(ProviderKind.GEMINI, lambda _: httpx.Response(429, json=body))
    assert (error.code, error.retry_after) == ("rate_limited", 12.0)


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_garbage_data_is_malformed(kind: ProviderKind) -> None:
    body = TRUNCATED[kind] + GARBAGE[kind] + RECORDED[kind][0]
    error, seen = await failure(kind, lambda _: sse(body))
    assert error.code == "malformed_stream"
    assert "".join(texts(seen)).rstrip(".") == "Try some jazz"


@pytest.mark.parametrize(
    "reason", ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"]
)
async def test_a_gemini_tool_call_that_failed_is_not_an_empty_answer(reason: str) -> None:
    """These ended as an empty answer with ``stop``, and the breaker counted a success."""
    error, _ = await failure(
        ProviderKind.GEMINI, lambda _: sse(GEMINI_STREAM.replace("STOP", reason))
    )
    assert error.code == "malformed_stream"
    assert reason in str(error)


async def test_an_openai_refusal_is_the_answer_text() -> None:
    """A refusal came in ``delta.refusal``, not ``content``: the answer was empty."""
    chunks = [{"delta": {"role": "assistant", "refusal": ""}}, {"delta": {"refusal": "I can"}}]
    chunks += [{"delta": {"refusal": "not help."}}, {"delta": {}, "finish_reason": "stop"}]
    body = "".join(f"data: {json.dumps({'choices': [c]})}\n\n" for c in chunks)
    items, _ = await collect(ProviderKind.OPENAI, lambda _: sse(body + "data: [DONE]\n\n"))
    assert texts(items) == ["I can", "not help."]
    assert items[-1] == Finish(FinishReason.STOP, Usage())


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_stream_without_end_marker_is_malformed(kind: ProviderKind) -> None:
    error, seen = await failure(kind, lambda _: sse(TRUNCATED[kind]))
    assert error.code == "malformed_stream"
    assert "".join(texts(seen)).rstrip(".") == "Try some jazz"
    assert not any(isinstance(item, Finish) for item in seen)


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_connection_dropped_mid_stream_is_disconnected(kind: ProviderKind) -> None:
    drop = httpx.RemoteProtocolError("peer closed connection without sending complete body")
    error, seen = await failure(kind, lambda _: sse(TRUNCATED[kind], fail=drop))
    assert error.code == "disconnected"
    assert "".join(texts(seen)).rstrip(".") == "Try some jazz"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("refused"), "connect_error"),
        (httpx.ConnectTimeout("slow connect"), "timeout"),
        (httpx.ReadTimeout("slow read"), "timeout"),
        (httpx.ReadError("reset"), "disconnected"),
        (httpx.RemoteProtocolError("Server disconnected"), "disconnected"),
    ],
)
async def test_transport_errors(exc: Exception, code: str) -> None:
    def reply(_: httpx.Request) -> httpx.Response:
        raise exc

    error, _ = await failure(ProviderKind.OPENAI, reply)
    assert error.code == code
    assert error.status is None


async def test_read_timeout_mid_stream() -> None:
    reply = lambda _: sse(TRUNCATED[ProviderKind.OPENAI], fail=httpx.ReadTimeout("idle"))  # noqa: E731
    error, seen = await failure(ProviderKind.OPENAI, reply)
    assert error.code == "timeout"
    assert texts(seen)


async def test_non_sse_success_is_malformed() -> None:
    reply = lambda _: httpx.Response(200, json={"choices": []})  # noqa: E731
    error, _ = await failure(ProviderKind.OPENAI, reply)
    assert error.code == "malformed_stream"


@pytest.mark.parametrize(
    ("kind", "event", "code", "status"),
    [
        (
            ProviderKind.ANTHROPIC,
            'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
            '"message":"Overloaded"}}\n\n',
            "http_529",
            529,
        ),
        (
            ProviderKind.ANTHROPIC,
            'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
            '"message":"slow down"}}\n\n',
            "rate_limited",
            429,
        ),
        (
            ProviderKind.OPENAI,
            'data: {"error":{"message":"upstream failed","code":502}}\n\n',
            "http_502",
            502,
        ),
        (
            ProviderKind.GEMINI,
            'data: {"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}\r\n\r\n',
            "http_503",
            503,
        ),
    ],
)
async def test_error_event_mid_stream(
    kind: ProviderKind, event: str, code: str, status: int
) -> None:
    error, seen = await failure(kind, lambda _: sse(TRUNCATED[kind] + event))
    assert (error.code, error.status) == (code, status)
    assert "".join(texts(seen)).rstrip(".") == "Try some jazz"


async def test_closing_the_generator_closes_the_response() -> None:
    body = ChunkedStream(OPENAI_STREAM.encode())
    reply = lambda _: httpx.Response(  # noqa: E731
        200, headers={"content-type": "text/event-stream"}, stream=body
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(reply)) as client:
        stream = build_provider(config_for(ProviderKind.OPENAI), client).stream(chat_request())
        assert isinstance(await anext(stream), TextChunk)
        assert not body.closed
        await stream.aclose()
    assert body.closed


def test_build_provider_picks_the_class() -> None:
    client = httpx.AsyncClient()
    expected: dict[ProviderKind, type] = {
        ProviderKind.OPENAI: OpenAIProvider,
        ProviderKind.ANTHROPIC: AnthropicProvider,
        ProviderKind.GEMINI: GeminiProvider,
    }
    for kind, cls in expected.items():
        provider: Provider = build_provider(config_for(kind), client)
        assert isinstance(provider, cls)
    demo = ProviderConfig(name="demo", kind=ProviderKind.DEMO, models=["echotune-demo-1"])
    assert isinstance(build_provider(demo, client), DemoProvider)


# --- demo ---------------------------------------------------------------------------------


def demo_provider(pace_ms: float = 0) -> DemoProvider:
    config = ProviderConfig(
        name="demo", kind=ProviderKind.DEMO, models=["echotune-demo-1"], token_pace_ms=pace_ms
    )
    return DemoProvider(config, httpx.AsyncClient())


def demo_request(text: str, **overrides: Any) -> ProviderRequest:
    message = ChatMessage(role=Role.USER, content=text)
    return ProviderRequest("req-demo-0001", "echotune-demo-1", [message], **overrides)


async def run_demo(text: str, **overrides: Any) -> list[StreamItem]:
    return [item async for item in demo_provider().stream(demo_request(text, **overrides))]


async def test_demo_is_deterministic_and_finishes() -> None:
    started = time.monotonic()
    first = await run_demo("Songs for my morning workout?")
    second = await run_demo("Songs for my morning workout?")
    assert time.monotonic() - started < 1.0
    assert first == second
    *chunks, finish = first
    assert isinstance(finish, Finish)
    assert finish.reason is FinishReason.STOP
    assert 40 <= len(chunks) <= 120
    assert finish.usage.completion_tokens == len(chunks)
    assert finish.usage.prompt_tokens > 0
    answer = "".join(texts(first))
    assert "workout" in answer
    assert "demo provider" in answer


async def test_demo_answer_depends_on_the_question() -> None:
    focus = "".join(texts(await run_demo("music to focus while coding")))
    jazz = "".join(texts(await run_demo("recommend some jazz")))
    assert focus != jazz
    assert "focus" in focus
    assert "jazz" in jazz


async def test_demo_honours_max_tokens() -> None:
    items = await run_demo("hello", max_tokens=5)
    assert len(texts(items)) == 5
    assert items[-1] == Finish(FinishReason.LENGTH, items[-1].usage)  # type: ignore[union-attr]


async def test_demo_cancellation_is_prompt() -> None:
    provider = demo_provider(pace_ms=10_000)
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(demo_request("sad songs")):
            got_first.set()

    task = asyncio.create_task(consume())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_tokenize_keeps_spaces() -> None:
    assert tokenize("a bc  d") == ["a ", "bc  ", "d"]


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_an_event_without_data_does_not_fail_the_stream(kind: ProviderKind) -> None:
    """A proxy's ``event: keepalive`` block was parsed as JSON "": a malformed stream."""
    items, _ = await collect(kind, lambda _: sse("event: keepalive\n\n" + RECORDED[kind][0]))
    assert "".join(texts(items))
    assert isinstance(items[-1], Finish)


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_a_compressed_stream_is_decoded(kind: ProviderKind) -> None:
    """The body is read raw unless content-encoded: a gzip body still gives the answer."""
    body, _ = RECORDED[kind]
    packed = gzip.compress(body.encode())
    headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}

    def reply(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, stream=ChunkedStream(packed, size=7))

    items, _ = await collect(kind, reply)
    assert "".join(texts(items)) == "Try some jazz."


@pytest.mark.parametrize("value", ["NaN", '"\\ud800"'])
async def test_json_only_pythons_reader_takes_is_still_read(value: str) -> None:
    """orjson refuses these; they were read before it, and still are (the slow way)."""
    first = '{"choices":[{"index":0,"delta":{"content":"ok"}}],"x":' + value + "}"
    last = json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    body = f"data: {first}\n\ndata: {last}\n\n"
    items, _ = await collect(ProviderKind.OPENAI, lambda _: sse(body + "data: [DONE]\n\n"))
    assert texts(items) == ["ok"]


_TEXT_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
    {"choices": [{"delta": {"role": "assistant", "content": ""}}], "usage": None},
    {"choices": [{"delta": {"content": "hi"}, "finish_reason": "length"}]},
    {"choices": [{"delta": {"content": "hi", "refusal": "no"}}]},
    {"choices": [{"delta": {"content": None, "refusal": "no"}}]},
    {"choices": [{"delta": {"role": None, "content": "hi"}}]},
    {"choices": [{"delta": {"content": "hi"}}], "usage": {"completion_tokens": 3}},
    {"choices": [{"delta": {"content": "hi"}}], "x_groq": {"usage": {"prompt_tokens": 2}}},
    {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
    {"choices": [{"delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
    {"choices": [{"delta": {"content": "hi", "tool_calls": [{"function": {"name": "f"}}]}}]},
    {"choices": [{"delta": {"content": "hi"}, "logprobs": {"content": []}}]},
    {"choices": [{"delta": {"content": 5}}]},
    {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
]


@pytest.mark.parametrize("chunk", _TEXT_CHUNKS)
def test_a_chunk_read_by_the_short_path_gives_what_the_long_one_does(
    chunk: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from echotune.worker.providers import openai
    from echotune.worker.providers.sse import SseEvent

    def read(parser: openai.OpenAIParser) -> tuple[list[StreamItem], FinishReason, Usage]:
        items = parser.feed(SseEvent("", json.dumps(chunk)))
        return items, parser.reason, parser.usage

    short = read(openai.OpenAIParser("p"))
    monkeypatch.setattr(openai, "_plain_text", lambda chunk: None)
    assert short == read(openai.OpenAIParser("p"))

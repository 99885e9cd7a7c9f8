"""A scriptable fake upstream LLM server speaking the OpenAI, Anthropic and Gemini wire formats.

Run: ``python -m echotune.fake_llm --host 127.0.0.1 --port 0 [--ttft-ms 0] [--pace-ms 0]
[--tokens 16] [--stamp]``; it prints ``FAKE_LLM_READY port=<port>`` once it accepts connections.
In-process: ``async with serve_fake_llm() as fake: ...`` (see :class:`RunningFakeLLM`).

Provider endpoints (as the real providers; base URLs: OpenAI ``{root}/v1``, Anthropic and
Gemini ``{root}``):

* ``POST /v1/chat/completions`` (SSE when ``stream: true``, else a chat.completion JSON)
* ``POST /v1/messages`` (named Anthropic events, with a ``ping``; always streamed)
* ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``

Each provider request is answered by a :class:`Step`, chosen by its ``X-Request-Id`` header
(``-`` when absent): the scripted steps of that key in order (the last one repeats), else the
default step. Control API (JSON):

* ``PUT /_control/scripts/{key}`` ``{"attempts": [step, ...]}``
* ``PUT /_control/default`` ``step``
* ``PUT /_control/outages/{model}`` ``{"step": step, "for_s": s}`` → every request for
  ``model`` (the body's ``model``, or Gemini's path) gets ``step`` (default: a 503) for ``s``
  seconds, scripts untouched; ``DELETE /_control/outages/{model}`` ends it early
* ``GET /_control/requests/{key}[?wait=<s>&count=<n>&until=ended|started]`` → the key's
  attempts; with ``wait``, first waits (up to ``wait`` seconds) until ``count`` (default 1)
  attempts exist and all ended (``until=started``: exist)
* ``GET /_control/requests`` → ``{key: [attempt, ...]}``
* ``DELETE /_control`` → forget scripts, the default step and recordings
* ``GET /_control/health`` → ``{"ok": true}``

An attempt's record (:class:`Attempt`) holds its arrival (``started_ns`` monotonic,
``started_wall``), first token and end times, how it ended (``outcome``,
``closed_by_client``), the exact ``text`` it sent, and ``concurrent_with``: the same key's
earlier attempts still in progress when it arrived (one client's attempts never overlap).

A step (JSON): ``status`` (200), ``retry_after`` (null | seconds | HTTP-date), ``ttft_ms`` (delay
before the first token, after the head and preamble are sent), ``pace_ms`` (between tokens),
``tokens`` (null = default tokens), ``token_count`` (length of the default tokens), and after
``n`` tokens (n > len(tokens) means before the end marker): ``disconnect_after`` (drop the
connection), ``hang_after`` (send nothing more until the client leaves),
``malformed_after`` (a garbage data line, then the body ends cleanly without the end marker);
``error_body`` (JSON or text replacing the provider-style error body), ``stamp``.
Omitted fields take the CLI settings. A request's ``max_tokens`` (``maxOutputTokens``) cuts
the tokens and makes the finish reason ``length``.

Tools, JSON output, logprobs: ``tool_calls`` (``[{"name", "arguments" (JSON text or object),
"id"?}]``) are streamed after the text in the provider's format (OpenAI ``delta.tool_calls``
pieces, Anthropic ``tool_use`` blocks with ``input_json_delta``, Gemini ``functionCall`` parts
with a ``thoughtSignature``), finishing ``tool_calls`` / ``tool_use`` / ``STOP``. A request in
JSON mode (OpenAI ``response_format``, Gemini ``responseMimeType``) gets ``json`` (default
``{"answer": <text>}``) as its text; one forcing a tool call (Anthropic ``tool_choice`` tool,
OpenAI named ``tool_choice``, Gemini ANY with one name) gets that call with ``json`` as its
arguments. A request asking for logprobs gets ``logprobs[i]`` (default ``-0.1 × (i mod 5 + 1)``)
for token ``i``, with ``top_logprobs`` alternatives (the token, then ``altK`` at K nats less).
A request the real API would refuse (``checks.py``: unknown fields, unanswered tool calls, bad
tool ids, missing thought signatures) gets a 400 in the provider's error format.

Default tokens: :func:`default_tokens` — ``n`` words from :data:`WORDS` in a cycle, each
followed by a space. With ``stamp`` every token is ``"<time.monotonic_ns()> "`` at send time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import uvicorn

from echotune.fake_llm import checks

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

READY_PREFIX = "FAKE_LLM_READY"
NO_KEY = "-"
WORDS = (
    "echo", "tune", "plays", "a", "song", "about", "the", "night", "sky",
    "with", "soft", "drums", "and", "warm", "bass", "lines",
)  # fmt: skip
GEMINI_PATH = re.compile(r"^/v1(?:beta)?/models/([^/:]+):streamGenerateContent$")
OVERLAP_GRACE_YIELDS = 5
OVERLAP_GRACE_S = 0.01
REASON_PHRASES = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}


def default_tokens(n: int) -> list[str]:
    """The default answer: ``n`` words from :data:`WORDS` in a cycle, each followed by a space."""
    return [f"{WORDS[i % len(WORDS)]} " for i in range(n)]


class ControlError(ValueError):
    """A bad control request (answered with 400)."""


class AbortConnection(Exception):
    """Raised to make uvicorn drop the connection abruptly (no end of the chunked body)."""


@dataclass(frozen=True)
class Step:
    """How to answer one provider request. Omitted JSON fields take the server's defaults."""

    status: int = 200
    retry_after: str | None = None
    ttft_ms: float = 0.0
    pace_ms: float = 0.0
    tokens: list[str] | None = None
    token_count: int | None = None
    disconnect_after: int | None = None
    hang_after: int | None = None
    malformed_after: int | None = None
    error_body: Any = None
    stamp: bool = False
    tool_calls: list[dict[str, Any]] | None = None
    json: Any = None
    logprobs: list[float] | None = None

    @classmethod
    def parse(cls, data: Any, base: Step) -> Step:
        """A step from its JSON form; fields missing from ``data`` come from ``base``."""
        if not isinstance(data, dict):
            raise ControlError("a step must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ControlError(f"unknown step fields: {sorted(unknown)}")
        values = dict(data)
        if isinstance(values.get("retry_after"), int | float):
            values["retry_after"] = str(values["retry_after"])
        step = replace(base, **values)
        step.check()
        return step

    def check(self) -> None:
        """Raise ControlError when a field has the wrong type or range."""
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ControlError("status must be an int in 100..599")
        for name in ("ttft_ms", "pace_ms"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ControlError(f"{name} must be a number >= 0")
        for name in ("token_count", "disconnect_after", "hang_after", "malformed_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ControlError(f"{name} must be null or an int >= 0")
        if self.tokens is not None and not all(isinstance(t, str) for t in self.tokens):
            raise ControlError("tokens must be null or a list of strings")
        if self.retry_after is not None and not isinstance(self.retry_after, str):
            raise ControlError("retry_after must be null, a number or a string")
        if not isinstance(self.stamp, bool):
            raise ControlError("stamp must be a boolean")
        for call in self.tool_calls or []:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ControlError('tool_calls must be objects with a "name"')
            if not isinstance(call.get("arguments", {}), str | dict):
                raise ControlError("tool call arguments must be a JSON string or an object")
        if self.logprobs is not None and not all(isinstance(v, int | float) for v in self.logprobs):
            raise ControlError("logprobs must be null or a list of numbers")

    def calls(self) -> list[FakeCall]:
        """The scripted tool calls."""
        return [
            FakeCall(
                str(call.get("id", "")),
                call["name"],
                _arguments_text(call.get("arguments", {})),
            )
            for call in self.tool_calls or []
        ]

    def logprob(self, index: int) -> float:
        """The log-probability of token ``index`` (scripted, else a fixed pattern)."""
        if self.logprobs and index < len(self.logprobs):
            return float(self.logprobs[index])
        return -round(0.1 * (index % 5 + 1), 3)


@dataclass(frozen=True)
class FakeCall:
    """A tool call the fake answers with (``id`` empty: the wire makes one)."""

    id: str
    name: str
    arguments: str


def _arguments_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def pieces(text: str, size: int = 6) -> list[str]:
    """``text`` cut into pieces of ``size`` characters (how JSON and arguments stream)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass(frozen=True)
class FakeSettings:
    """Server-wide defaults (the CLI flags)."""

    ttft_ms: float = 0.0
    pace_ms: float = 0.0
    tokens: int = 16
    stamp: bool = False

    def base_step(self) -> Step:
        """The step used when nothing is scripted."""
        return Step(ttft_ms=self.ttft_ms, pace_ms=self.pace_ms, stamp=self.stamp)


@dataclass
class Attempt:
    """The record of one provider request."""

    key: str
    path: str
    method: str
    query: str
    headers: dict[str, str]
    json: Any
    started_ns: int
    provider: str | None = None
    model: str | None = None
    started_wall: float = 0.0
    """``time.time()`` at arrival (``started_ns`` is ``time.monotonic_ns()``)."""
    status: int | None = None
    first_token_ns: int | None = None
    ended_ns: int | None = None
    closed_by_client: bool = False
    tokens_sent: int = 0
    text: str = ""
    """The exact text sent in this answer's tokens."""
    outcome: str = "running"
    outage: bool = False
    """Answered by an outage of its model (see ``PUT /_control/outages/{model}``)."""
    concurrent_with: list[int] = field(default_factory=list)
    """Indices of this key's earlier attempts still in progress when this one arrived."""


class Exchange:
    """One request being answered: its record, body and the client-gone watch."""

    def __init__(self, attempt: Attempt, receive: Receive, send: Send) -> None:
        self.attempt = attempt
        self.send = send
        self.stop = asyncio.Event()
        self.client_gone_ns: int | None = None
        self.finished = False
        self._watch = asyncio.create_task(self._watch_disconnect(receive))

    async def _watch_disconnect(self, receive: Receive) -> None:
        """Wait for ``http.disconnect`` (uvicorn also sends it once the response is complete)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.finished:
            self.client_gone_ns = time.monotonic_ns()
        self.stop.set()

    async def pause(self, ms: float) -> bool:
        """Wait ``ms`` milliseconds unless stopped; True when the answer may go on."""
        if ms > 0 and not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ms / 1000.0):
                    await self.stop.wait()
        else:
            await asyncio.sleep(0)
        return not self.stop.is_set()

    async def start(self, status: int, content_type: str, extra: list[tuple[str, str]]) -> None:
        """Send the response head."""
        self.attempt.status = status
        headers = [("content-type", content_type), *extra]
        encoded = [(k.encode(), v.encode()) for k, v in headers]
        await self.send({"type": "http.response.start", "status": status, "headers": encoded})

    async def body(self, data: bytes, *, more: bool = True) -> None:
        """Send body bytes; ``more=False`` ends the response."""
        if not more:
            self.finished = True
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    def close(self) -> None:
        """Finish the record (ended_ns, closed_by_client) and stop the watcher."""
        self._watch.cancel()
        record = self.attempt
        if self.client_gone_ns is not None and not self.finished:
            record.closed_by_client = True
            record.ended_ns = self.client_gone_ns
            record.outcome = "closed_by_client"
        else:
            record.ended_ns = time.monotonic_ns()


# --- wire formats -----------------------------------------------------------------------


class Wire:
    """How one provider frames a streamed answer and its errors."""

    name = ""
    sep = "\n\n"
    garbage = b"data: {this is not json\n\n"

    def __init__(self, body: Any, model: str) -> None:
        self.body = body if isinstance(body, dict) else {}
        self.model = model
        self.id = uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.prompt_tokens = _count_words(self.body)

    def frame(self, data: Any, event: str | None = None) -> bytes:
        """One SSE frame."""
        head = f"event: {event}\n" if event else ""
        return f"{head}data: {json.dumps(data)}{self.sep}".encode()

    def max_tokens(self) -> int | None:
        """The request's output token limit, if any."""
        value = self.body.get("max_tokens")
        return value if isinstance(value, int) else None

    def streams(self) -> bool:
        """Whether the client asked for a streamed answer."""
        return True

    def preamble(self) -> list[bytes]:
        """Frames sent right after the response head."""
        return []

    def problem(self) -> str | None:
        """Why the real provider would refuse this request (400), or None."""
        return None

    def json_mode(self) -> bool:
        """The request asks for a JSON document as the answer's text."""
        return False

    def forced_tool(self) -> str | None:
        """The tool the request forces the model to call, if any."""
        return None

    def top_logprobs(self) -> int | None:
        """How many alternatives per token the request wants logprobs for (None: no logprobs)."""
        return None

    def token(self, text: str, logprob: float | None = None) -> bytes:
        """The frame carrying one token (with its logprob when asked for)."""
        raise NotImplementedError

    def tool_frames(self, calls: list[FakeCall]) -> list[bytes]:
        """Frames streaming ``calls``, sent after the text tokens."""
        raise NotImplementedError

    def epilogue(self, length: bool, completion: int, tools: bool = False) -> list[bytes]:
        """Frames that end the answer, with the end marker."""
        raise NotImplementedError

    def alternatives(self, text: str, logprob: float) -> list[tuple[str, float]]:
        """The token itself, then ``alt1``, ``alt2``… one nat less likely each."""
        top = self.top_logprobs() or 0
        return [(text, logprob), *((f"alt{k}", logprob - k) for k in range(1, top))][:top]

    def error(self, status: int, message: str) -> Any:
        """The provider's JSON error body."""
        raise NotImplementedError

    def complete(self, text: str, length: bool, completion: int) -> Any:
        """A non-streamed answer."""
        raise NotImplementedError


class OpenAIWire(Wire):
    """OpenAI Chat Completions chunks ending with ``data: [DONE]``."""

    name = "openai"

    def max_tokens(self) -> int | None:
        """``max_tokens`` or ``max_completion_tokens``."""
        value = self.body.get("max_tokens") or self.body.get("max_completion_tokens")
        return value if isinstance(value, int) else None

    def streams(self) -> bool:
        """``stream: true`` was requested."""
        return self.body.get("stream") is True

    def _usage_wanted(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    def problem(self) -> str | None:
        """See :func:`checks.openai_problem`."""
        return checks.openai_problem(self.body)

    def json_mode(self) -> bool:
        """``response_format`` json_object or json_schema."""
        kind = _dict(self.body.get("response_format")).get("type")
        return kind in ("json_object", "json_schema")

    def forced_tool(self) -> str | None:
        """``tool_choice: {"type": "function", "function": {"name"}}``."""
        name = _dict(_dict(self.body.get("tool_choice")).get("function")).get("name")
        return name if isinstance(name, str) else None

    def top_logprobs(self) -> int | None:
        """``top_logprobs`` (0 by default) when ``logprobs`` is true."""
        if self.body.get("logprobs") is not True:
            return None
        top = self.body.get("top_logprobs")
        return top if isinstance(top, int) else 0

    def _chunk(
        self, delta: dict[str, Any], finish: str | None, logprobs: Any = None
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        chunk: dict[str, Any] = {
            "id": f"chatcmpl-{self.id}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [choice],
        }
        if self._usage_wanted():
            chunk["usage"] = None
        return chunk

    def _usage(self, completion: int) -> dict[str, int]:
        total = self.prompt_tokens + completion
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": total,
        }

    def preamble(self) -> list[bytes]:
        """The role chunk."""
        return [self.frame(self._chunk({"role": "assistant", "content": ""}, None))]

    def token(self, text: str, logprob: float | None = None) -> bytes:
        """A content delta chunk."""
        logprobs = None
        if logprob is not None:
            top = [
                {"token": t, "logprob": lp, "bytes": list(t.encode())}
                for t, lp in self.alternatives(text, logprob)
            ]
            entry = {"token": text, "logprob": logprob, "bytes": list(text.encode())}
            logprobs = {"content": [{**entry, "top_logprobs": top}], "refusal": None}
        return self.frame(self._chunk({"content": text}, None, logprobs))

    def tool_frames(self, calls: list[FakeCall]) -> list[bytes]:
        """Per call: a first piece with id and name, then the arguments in pieces."""
        frames: list[bytes] = []
        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call.id or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            frames.append(self.frame(self._chunk({"tool_calls": [head]}, None)))
            for piece in pieces(call.arguments):
                part = {"index": index, "function": {"arguments": piece}}
                frames.append(self.frame(self._chunk({"tool_calls": [part]}, None)))
        return frames

    def epilogue(self, length: bool, completion: int, tools: bool = False) -> list[bytes]:
        """Finish chunk, usage chunk (when asked for) and ``[DONE]``."""
        reason = "length" if length else "tool_calls" if tools else "stop"
        frames = [self.frame(self._chunk({}, reason))]
        if self._usage_wanted():
            usage = {**self._chunk({}, None), "choices": [], "usage": self._usage(completion)}
            frames.append(self.frame(usage))
        return [*frames, b"data: [DONE]\n\n"]

    def error(self, status: int, message: str) -> Any:
        """``{"error": {message, type, param, code}}``."""
        kind = "requests" if status == 429 else "server_error" if status >= 500 else "invalid"
        code = "rate_limit_exceeded" if status == 429 else None
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def complete(self, text: str, length: bool, completion: int) -> Any:
        """A ``chat.completion`` object."""
        return {
            "id": f"chatcmpl-{self.id}",
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "length" if length else "stop",
                }
            ],
            "usage": self._usage(completion),
        }


ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicWire(Wire):
    """Anthropic Messages events, ending with ``message_stop``."""

    name = "anthropic"
    garbage = b"event: content_block_delta\ndata: {this is not json\n\n"

    def preamble(self) -> list[bytes]:
        """message_start, content_block_start and a ping."""
        message: dict[str, Any] = {
            "id": f"msg_{self.id}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 1},
        }
        text_block = {"type": "text", "text": ""}
        block = {"type": "content_block_start", "index": 0, "content_block": text_block}
        return [
            self.frame({"type": "message_start", "message": message}, "message_start"),
            self.frame(block, "content_block_start"),
            self.frame({"type": "ping"}, "ping"),
        ]

    def problem(self) -> str | None:
        """See :func:`checks.anthropic_problem`."""
        return checks.anthropic_problem(self.body)

    def forced_tool(self) -> str | None:
        """``tool_choice: {"type": "tool", "name"}``."""
        choice = _dict(self.body.get("tool_choice"))
        name = choice.get("name")
        return name if choice.get("type") == "tool" and isinstance(name, str) else None

    def token(self, text: str, logprob: float | None = None) -> bytes:
        """A text_delta."""
        delta = {"type": "text_delta", "text": text}
        data = {"type": "content_block_delta", "index": 0, "delta": delta}
        return self.frame(data, "content_block_delta")

    def tool_frames(self, calls: list[FakeCall]) -> list[bytes]:
        """The text block's stop, then per call a tool_use block with input_json_delta pieces."""
        frames = [self.frame({"type": "content_block_stop", "index": 0}, "content_block_stop")]
        for number, call in enumerate(calls, start=1):
            block = {
                "type": "tool_use",
                "id": call.id or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": call.name,
                "input": {},
            }
            start = {"type": "content_block_start", "index": number, "content_block": block}
            frames.append(self.frame(start, "content_block_start"))
            for piece in pieces(call.arguments):
                delta = {"type": "input_json_delta", "partial_json": piece}
                data = {"type": "content_block_delta", "index": number, "delta": delta}
                frames.append(self.frame(data, "content_block_delta"))
            stop = {"type": "content_block_stop", "index": number}
            frames.append(self.frame(stop, "content_block_stop"))
        return frames

    def epilogue(self, length: bool, completion: int, tools: bool = False) -> list[bytes]:
        """content_block_stop (unless tool blocks closed it), message_delta and message_stop."""
        reason = "max_tokens" if length else "tool_use" if tools else "end_turn"
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": completion},
        }
        stop_text = [] if tools else [{"type": "content_block_stop", "index": 0}]
        return [
            *(self.frame(stop, "content_block_stop") for stop in stop_text),
            self.frame(message_delta, "message_delta"),
            self.frame({"type": "message_stop"}, "message_stop"),
        ]

    def error(self, status: int, message: str) -> Any:
        """``{"type": "error", "error": {type, message}}``."""
        kind = ANTHROPIC_ERRORS.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}


GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GeminiWire(Wire):
    """Gemini GenerateContentResponse chunks (CRLF framed); the body end ends the stream."""

    name = "gemini"
    sep = "\r\n\r\n"
    garbage = b"data: {this is not json\r\n\r\n"

    def max_tokens(self) -> int | None:
        """``generationConfig.maxOutputTokens``."""
        config = self.body.get("generationConfig")
        value = config.get("maxOutputTokens") if isinstance(config, dict) else None
        return value if isinstance(value, int) else None

    def problem(self) -> str | None:
        """See :func:`checks.gemini_problem`."""
        return checks.gemini_problem(self.body)

    def _config(self) -> dict[str, Any]:
        return _dict(self.body.get("generationConfig"))

    def json_mode(self) -> bool:
        """``responseMimeType: application/json``."""
        return self._config().get("responseMimeType") == "application/json"

    def forced_tool(self) -> str | None:
        """Mode ANY with exactly one allowed function name."""
        config = _dict(_dict(self.body.get("toolConfig")).get("functionCallingConfig"))
        names = config.get("allowedFunctionNames")
        if config.get("mode") == "ANY" and isinstance(names, list) and len(names) == 1:
            return str(names[0])
        return None

    def top_logprobs(self) -> int | None:
        """``logprobs`` (0 by default) when ``responseLogprobs`` is true."""
        if self._config().get("responseLogprobs") is not True:
            return None
        top = self._config().get("logprobs")
        return top if isinstance(top, int) else 0

    def _chunk(
        self,
        text: str,
        finish: str | None,
        completion: int | None,
        parts: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        content = {"parts": parts or [{"text": text}], "role": "model"}
        candidate: dict[str, Any] = {"content": content}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        usage: dict[str, Any] = {"promptTokenCount": self.prompt_tokens}
        if completion is not None:
            usage["candidatesTokenCount"] = completion
        usage["totalTokenCount"] = self.prompt_tokens + (completion or 0)
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.id,
        }

    def token(self, text: str, logprob: float | None = None) -> bytes:
        """A chunk with one text part (and its logprobsResult when asked for)."""
        chunk = self._chunk(text, None, None)
        if logprob is not None:
            top = [
                {"token": t, "tokenId": 1000 + k, "logProbability": lp}
                for k, (t, lp) in enumerate(self.alternatives(text, logprob))
            ]
            chosen = {"token": text, "tokenId": 1000, "logProbability": logprob}
            result = {"topCandidates": [{"candidates": top}] if top else []}
            chunk["candidates"][0]["logprobsResult"] = {**result, "chosenCandidates": [chosen]}
        return self.frame(chunk)

    def tool_frames(self, calls: list[FakeCall]) -> list[bytes]:
        """One chunk per call: a whole functionCall part with a thoughtSignature."""
        frames = []
        for call in calls:
            function = {"name": call.name, "args": json.loads(call.arguments or "{}")}
            signature = checks.gemini_signature(call.name)
            part = {"functionCall": function, "thoughtSignature": signature}
            frames.append(self.frame(self._chunk("", None, None, [part])))
        return frames

    def epilogue(self, length: bool, completion: int, tools: bool = False) -> list[bytes]:
        """A last chunk with the finishReason and the full usage."""
        return [self.frame(self._chunk("", "MAX_TOKENS" if length else "STOP", completion))]

    def error(self, status: int, message: str) -> Any:
        """``{"error": {code, message, status}}``."""
        return {
            "error": {
                "code": status,
                "message": message,
                "status": GOOGLE_STATUS.get(status, "UNKNOWN"),
            }
        }


def _count_words(value: Any) -> int:
    """Rough prompt token count: words in the strings of content/text/system fields."""
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    if not isinstance(value, dict):
        return 0
    total = 0
    for key, item in value.items():
        if isinstance(item, str):
            total += len(item.split()) if key in {"content", "text", "system"} else 0
        else:
            total += _count_words(item)
    return total


# --- the ASGI app -----------------------------------------------------------------------


class FakeLLM:
    """The ASGI application: provider endpoints, scripting and recording."""

    def __init__(self, settings: FakeSettings | None = None) -> None:
        self.settings = settings or FakeSettings()
        self._changed = asyncio.Event()
        self._live: set[Exchange] = set()
        self.reset()

    def reset(self) -> None:
        """Forget scripts, the default step and the recordings."""
        self.default = self.settings.base_step()
        self.scripts: dict[str, list[Step]] = {}
        self.consumed: dict[str, int] = {}
        self.records: dict[str, list[Attempt]] = {}
        self.outages: dict[str, tuple[Step, float]] = {}

    def set_script(self, key: str, attempts: Any) -> None:
        """Script the answers to the requests carrying ``X-Request-Id: key``."""
        if not isinstance(attempts, list) or not attempts:
            raise ControlError('"attempts" must be a non-empty list of steps')
        base = self.settings.base_step()
        self.scripts[key] = [Step.parse(step, base) for step in attempts]
        self.consumed[key] = 0

    def set_default(self, step: Any) -> None:
        """Set the step answering unscripted requests."""
        self.default = Step.parse(step, self.settings.base_step())

    def next_step(self, key: str) -> Step:
        """The step answering the next request of ``key``."""
        steps = self.scripts.get(key)
        if not steps:
            return self.default
        index = self.consumed.get(key, 0)
        self.consumed[key] = index + 1
        return steps[min(index, len(steps) - 1)]

    def requests(self, key: str) -> list[dict[str, Any]]:
        """The recorded attempts of ``key``, in arrival order."""
        return [asdict(a) for a in self.records.get(key, [])]

    def all_requests(self) -> dict[str, list[dict[str, Any]]]:
        """Every key's recorded attempts."""
        return {key: self.requests(key) for key in self.records}

    async def wait_ended(
        self, key: str, count: int = 1, within_s: float = 5.0, *, ended: bool = True
    ) -> list[Attempt]:
        """Wait until ``key`` has ``count`` attempts (all ended, unless ``ended`` is false)."""
        async with asyncio.timeout(within_s):
            while True:
                records = self.records.get(key, [])
                done = not ended or all(r.ended_ns is not None for r in records)
                if len(records) >= count and done:
                    return list(records)
                changed = self._changed
                await changed.wait()

    def close(self) -> None:
        """Stop every stream in progress (hanging ones included): used at shutdown."""
        for exchange in list(self._live):
            exchange.stop.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        path, method = scope["path"], scope["method"]
        query = scope.get("query_string", b"").decode("latin-1")
        if path.startswith("/_control"):
            await self._control(method, path, query, bytes(raw), send)
            return
        wire = self._wire(method, path, query, bytes(raw))
        if wire is None:
            await _json(send, 404, {"error": {"message": f"no route {method} {path}"}})
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            k, v = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        key = headers.get("x-request-id") or NO_KEY
        attempt = Attempt(
            key, path, method, query, headers, wire.body or None, time.monotonic_ns(), wire.name
        )
        attempt.model, attempt.started_wall = wire.model, time.time()
        self.records.setdefault(key, []).append(attempt)
        exchange = Exchange(attempt, receive, send)
        self._live.add(exchange)
        self._notify()
        try:
            step = self._outage_step(wire.model)
            attempt.outage = step is not None
            step = step or self.next_step(key)
            attempt.concurrent_with = await self._overlapping(exchange)
            await self._answer(exchange, wire, step)
        finally:
            exchange.close()
            self._live.discard(exchange)
            self._notify()

    async def _overlapping(self, exchange: Exchange) -> list[int]:
        """Indices of the same key's earlier attempts still in progress when this one arrived.

        A client ends one attempt before it starts the next, but this server may learn of the
        end (a closed connection) a few loop iterations after the next request arrived: the
        pending notifications are processed first, so only truly concurrent attempts count.
        """
        key = exchange.attempt.key

        def running() -> list[Exchange]:
            return [
                other
                for other in self._live
                if other is not exchange
                and other.attempt.key == key
                and other.client_gone_ns is None
                and not other.finished
            ]

        if key == NO_KEY or not running():
            return []
        for _ in range(OVERLAP_GRACE_YIELDS):
            await asyncio.sleep(0)
        await asyncio.sleep(OVERLAP_GRACE_S)
        records = self.records.get(key, [])
        return sorted(records.index(other.attempt) for other in running())

    def _outage_step(self, model: str) -> Step | None:
        """The outage step of ``model`` while its outage lasts."""
        outage = self.outages.get(model)
        if outage is None or time.monotonic() >= outage[1]:
            return None
        return outage[0]

    def set_outage(self, model: str, payload: Any) -> None:
        """Answer every request for ``model`` with one step for ``for_s`` seconds."""
        if not isinstance(payload, dict) or not isinstance(payload.get("for_s"), int | float):
            raise ControlError('the body must be {"step": step, "for_s": seconds}')
        step = Step.parse(payload.get("step", {"status": 503}), self.settings.base_step())
        self.outages[model] = (step, time.monotonic() + float(payload["for_s"]))

    def _wire(self, method: str, path: str, query: str, raw: bytes) -> Wire | None:
        if method != "POST":
            return None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        model = str(body.get("model", "fake-model")) if isinstance(body, dict) else "fake-model"
        if path == "/v1/chat/completions":
            return OpenAIWire(body, model)
        if path == "/v1/messages":
            return AnthropicWire(body, model)
        match = GEMINI_PATH.match(path)
        if match and "alt=sse" in query.split("&"):
            return GeminiWire(body, match.group(1))
        return None

    async def _answer(self, ex: Exchange, wire: Wire, step: Step) -> None:
        record = ex.attempt
        problem = wire.problem()
        if problem is not None:  # refused as the real provider would
            step = replace(step, status=400, error_body=wire.error(400, problem))
        if step.status != 200:
            if not await ex.pause(step.ttft_ms):
                return
            await self._error(ex, wire, step)
            return
        tokens, calls = self._content(wire, step)
        limit = wire.max_tokens()
        length = limit is not None and len(tokens) > limit
        tokens, calls = (tokens[:limit], []) if length else (tokens, calls)
        if not wire.streams():
            if await ex.pause(step.ttft_ms):
                record.first_token_ns = time.monotonic_ns()
                record.tokens_sent = len(tokens)
                await ex.start(200, "application/json", [])
                text = record.text = "".join(tokens)
                completion = json.dumps(wire.complete(text, length, len(tokens))).encode()
                await ex.body(completion, more=False)
                record.outcome = "completed"
            return
        await ex.start(200, "text/event-stream", [("cache-control", "no-cache")])
        await ex.body(b"".join(wire.preamble()))
        tool_frames = wire.tool_frames(calls) if calls else []
        units = len(tokens) + len(tool_frames)  # what the *_after faults count
        with_logprobs = wire.top_logprobs() is not None
        for index in range(units + 1):
            if index == _at(step.hang_after, units):
                record.outcome = "hung"
                await ex.stop.wait()
                break
            if index == _at(step.disconnect_after, units):
                record.outcome = "disconnected_by_server"
                raise AbortConnection(f"disconnect_after={step.disconnect_after}")
            if index == _at(step.malformed_after, units):
                record.outcome = "malformed"
                await ex.body(wire.garbage)
                await ex.body(b"", more=False)
                return
            if index == units:
                break
            if not await ex.pause(step.ttft_ms if index == 0 else step.pace_ms):
                break
            if index < len(tokens):
                text = f"{time.monotonic_ns()} " if step.stamp else tokens[index]
                await ex.body(wire.token(text, step.logprob(index) if with_logprobs else None))
                record.text += text
            else:
                await ex.body(tool_frames[index - len(tokens)])
            record.tokens_sent += 1
            if record.first_token_ns is None:
                record.first_token_ns = time.monotonic_ns()
        if ex.stop.is_set():
            if ex.client_gone_ns is None:  # the server is shutting down
                raise AbortConnection("server shutdown")
            return
        epilogue = wire.epilogue(length, record.tokens_sent, bool(calls))
        await ex.body(b"".join(epilogue), more=False)
        record.outcome = "completed"

    def _content(self, wire: Wire, step: Step) -> tuple[list[str], list[FakeCall]]:
        """Text tokens and tool calls of the answer.

        In JSON mode the text is a JSON document (``step.json``, else ``{"answer": <text>}``)
        in pieces; a request forcing a tool call (Anthropic's way to JSON output) gets that
        call, with the document as its arguments, unless the step scripts its own calls.
        """
        tokens = step.tokens
        if tokens is None:
            count = step.token_count
            tokens = default_tokens(self.settings.tokens if count is None else count)
        calls, forced = step.calls(), wire.forced_tool()
        if not (wire.json_mode() or (forced and not calls)):
            return tokens, calls
        document = step.json if step.json is not None else {"answer": "".join(tokens).strip()}
        text = json.dumps(document)
        if forced and not calls:
            return [], [FakeCall("", forced, text)]
        return pieces(text), calls

    async def _error(self, ex: Exchange, wire: Wire, step: Step) -> None:
        body = step.error_body
        if body is None:
            phrase = REASON_PHRASES.get(step.status, "Error")
            body = wire.error(step.status, f"fake {wire.name} error {step.status} ({phrase})")
        extra = [("retry-after", step.retry_after)] if step.retry_after is not None else []
        if isinstance(body, str):
            await ex.start(step.status, "text/plain; charset=utf-8", extra)
            await ex.body(body.encode(), more=False)
        else:
            await ex.start(step.status, "application/json", extra)
            await ex.body(json.dumps(body).encode(), more=False)
        ex.attempt.outcome = "error_status"

    async def _control(self, method: str, path: str, query: str, raw: bytes, send: Send) -> None:
        parts = path.removeprefix("/_control").strip("/").split("/", 1)
        try:
            payload = json.loads(raw) if raw else None
            result = await self._control_call(method, parts, _query(query), payload)
        except (ControlError, ValueError) as exc:
            await _json(send, 400, {"error": str(exc)})
            return
        except TimeoutError:
            result = self.requests(parts[1]) if len(parts) == 2 else None
        if result is None:
            await _json(send, 404, {"error": f"no control route {method} {path}"})
        else:
            await _json(send, 200, result)

    async def _control_call(
        self, method: str, parts: list[str], query: dict[str, str], payload: Any
    ) -> Any:
        route = (method, parts[0], len(parts))
        if route == ("GET", "health", 1):
            return {"ok": True}
        if route == ("DELETE", "", 1):
            self.reset()
            return {"ok": True}
        if route == ("PUT", "default", 1):
            self.set_default(payload)
            return {"ok": True}
        if route == ("PUT", "outages", 2):
            self.set_outage(parts[1], payload)
            return {"ok": True}
        if route == ("DELETE", "outages", 2):
            self.outages.pop(parts[1], None)
            return {"ok": True}
        if route == ("PUT", "scripts", 2):
            if not isinstance(payload, dict):
                raise ControlError('the body must be {"attempts": [step, ...]}')
            self.set_script(parts[1], payload.get("attempts"))
            return {"ok": True}
        if route == ("GET", "requests", 1):
            return self.all_requests()
        if route == ("GET", "requests", 2):
            if "wait" in query:
                count = int(query.get("count", "1"))
                ended = query.get("until", "ended") != "started"
                await self.wait_ended(parts[1], count, float(query["wait"]), ended=ended)
            return self.requests(parts[1])
        return None


def _at(value: int | None, units: int) -> int | None:
    """The unit index where an ``*_after`` action happens (at most before the end marker)."""
    return None if value is None else min(value, units)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _query(query: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in query.split("&") if item)
    return {k: v for k, _, v in pairs}


async def _json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_app(settings: FakeSettings | None = None) -> FakeLLM:
    """A fresh fake LLM ASGI app."""
    return FakeLLM(settings)


# --- running it -------------------------------------------------------------------------


class _AbortFilter(logging.Filter):
    """Hides uvicorn's traceback for the deliberate :class:`AbortConnection`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], AbortConnection))


_ABORT_FILTER = _AbortFilter()


class FakeServer(uvicorn.Server):
    """A uvicorn server that reports readiness and stops the app's streams at shutdown."""

    def __init__(
        self,
        app: FakeLLM,
        *,
        signals: bool,
        log_level: str = "warning",
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        config = uvicorn.Config(
            app,
            log_level=log_level,
            log_config=uvicorn.config.LOGGING_CONFIG if signals else None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        super().__init__(config)
        error_log = logging.getLogger("uvicorn.error")
        if _ABORT_FILTER not in error_log.filters:
            error_log.addFilter(_ABORT_FILTER)
        self.fake_app = app
        self.signals = signals
        self.on_ready = on_ready
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then signal readiness."""
        await super().startup(sockets)
        self.ready.set()
        if self.started and self.on_ready is not None:
            self.on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop the app's streams first so that hanging ones do not delay the exit."""
        self.fake_app.close()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's signal handling, only when running as the CLI."""
        if self.signals:
            with super().capture_signals():
                yield
        else:
            yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


@dataclass
class RunningFakeLLM:
    """A fake server running in this process."""

    app: FakeLLM
    host: str
    port: int
    server: FakeServer = field(repr=False)

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:43210`` (Anthropic and Gemini base URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI-style base URL (``{url}/v1``)."""
        return f"{self.url}/v1"


@contextlib.asynccontextmanager
async def serve_fake_llm(
    settings: FakeSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningFakeLLM]:
    """Run the fake server in this event loop for the duration of the block."""
    app = create_app(settings)
    sock = bind_socket(host, port)
    server = FakeServer(app, signals=False)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await server.ready.wait()
        if not server.started:
            raise RuntimeError("the fake LLM server did not start")
        yield RunningFakeLLM(app, host, sock.getsockname()[1], server)
    finally:
        app.close()
        server.should_exit = True
        await task
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before 1st token")
    parser.add_argument("--pace-ms", type=float, default=0.0, help="delay between tokens")
    parser.add_argument("--tokens", type=int, default=16, help="default answer length")
    parser.add_argument("--stamp", action="store_true", help="tokens carry monotonic_ns")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    settings = FakeSettings(args.ttft_ms, args.pace_ms, args.tokens, args.stamp)
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    server = FakeServer(
        create_app(settings),
        signals=True,
        log_level=args.log_level,
        on_ready=lambda: print(f"{READY_PREFIX} port={port}", flush=True),
    )
    server.run(sockets=[sock])

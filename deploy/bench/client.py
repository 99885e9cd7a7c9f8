"""The load client: a minimal HTTP/1.1 SSE reader on asyncio protocols, one event loop per process.

It is deliberately cheap per token (no HTTP library, no JSON parsing on the token path: one
regular expression per event) so that it is not what limits the benchmark, and it measures its
own event-loop lag so that it can tell when it does.

Arm A speaks OpenAI streaming to the fake upstream directly; arm B reads the gateway's SSE.
Every token's text is the producer's ``time.monotonic_ns()`` stamp (fake ``--stamp``); in arm B
a delta also carries the worker's stamp ``t`` (``ECHOTUNE_WORKER_STAMP_TOKENS``). The clock is
CLOCK_MONOTONIC, the same in every process of the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

A, B = "A", "B"
OPENAI_TOKEN = re.compile(rb'"content": ?"(\d+) "')
DELTA_TEXT = re.compile(rb'"delta": ?"([\d ]+)"')
WORKER_STAMP = re.compile(rb'"t": ?(\d+)')
SYSTEM_PROMPT = "You are EchoTune, a friendly music recommendation assistant. Answer concisely."


@dataclass(frozen=True, slots=True)
class Target:
    """Where the arms send their requests."""

    fake_host: str
    fake_port: int
    gateway_host: str
    gateway_port: int
    api_key: str
    model: str
    provider: str


@dataclass(slots=True)
class Stream:
    """What one SSE response looked like from the client (times: CLOCK_MONOTONIC ns)."""

    arm: str
    rid: str
    start_ns: int = 0  # before connect
    head_ns: int = 0  # response head received
    first_event_ns: int = 0  # first SSE event (B: ``start``)
    first_token_ns: int = 0
    end_ns: int = 0  # final event (A: ``[DONE]``; B: ``done``/``error``) or failure
    status: int = 0
    tokens: int = 0
    delays: list[int] = field(default_factory=list)  # receive − producer stamp, per token
    legs: list[int] = field(default_factory=list)  # worker stamp − producer stamp (B)
    gaps: list[int] = field(default_factory=list)  # between consecutive tokens' receipt
    final: str = ""  # "done:stop", "done:cancelled", "error:<code>", "[DONE]"
    error: str = ""
    last_id: str = ""  # SSE id of the last event (B)
    first_id: str = ""  # SSE id of the first event (B)
    first_stamp: int = 0  # producer stamp of the first token received
    anomalies: int = 0  # retry / failover events (B)


def request_a(target: Target, rid: str) -> bytes:
    """The OpenAI streaming request the worker would send, straight to the fake."""
    body = json.dumps(
        {
            "model": target.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "bench"},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {target.fake_host}:{target.fake_port}\r\n"
        f"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {rid}\r\nAccept: text/event-stream\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def request_b(target: Target, rid: str, *, last_event_id: str | None = None) -> bytes:
    """GET /api/chat/stream: a new answer, or (``last_event_id``) a resume of ``rid``."""
    if last_event_id is None:
        query = (
            f"message=bench&request_id={rid}&provider={target.provider}"
            f"&model={target.model}&use_context=false&use_profile=false"
        )
        extra = ""
    else:
        query, extra = f"request_id={rid}", f"Last-Event-ID: {last_event_id}\r\n"
    head = (
        f"GET /api/chat/stream?{query} HTTP/1.1\r\n"
        f"Host: {target.gateway_host}:{target.gateway_port}\r\n"
        f"Authorization: Bearer {target.api_key}\r\nAccept: text/event-stream\r\n{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode()


class SSEConnection(asyncio.Protocol):
    """Reads one SSE response: head, chunked body, events; records into a :class:`Stream`."""

    def __init__(self, request: bytes, stream: Stream, stop_after: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.request, self.s, self.stop_after = request, stream, stop_after
        self.is_b = stream.arm == B
        self.raw = bytearray()
        self.body = bytearray()
        self.in_head = True
        self.chunked = False
        self.remaining = 0  # bytes left in the current chunk
        self.skip = 0  # CRLF bytes after a chunk still to skip
        self.prev = 0
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = loop.create_future()  # final event or failure
        self.closed: asyncio.Future[None] = loop.create_future()
        self.reached: asyncio.Future[int] = loop.create_future()  # ``stop_after`` tokens seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.s.error = self.s.error or f"connection_lost:{type(exc).__name__ if exc else 'eof'}"
            self.s.end_ns = time.monotonic_ns()
            self.finished.set_result(None)
        if not self.reached.done():
            self.reached.set_result(0)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.in_head:
            self.raw += data
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.raw[:end]).lower()
            data = bytes(self.raw[end + 4 :])
            self.raw.clear()
            self.in_head = False
            self.s.head_ns = now
            self.s.status = int(head.split(b" ", 2)[1])
            self.chunked = b"transfer-encoding: chunked" in head
            if self.s.status != 200:
                self.s.error = f"http_{self.s.status}"
                self._finish(now)
                return
        if self.chunked:
            self.raw += data
            self._dechunk()
        else:
            self.body += data
        self._events(now)

    def _dechunk(self) -> None:
        raw, pos, size = self.raw, 0, len(self.raw)
        while pos < size:
            if self.remaining:
                take = min(self.remaining, size - pos)
                self.body += raw[pos : pos + take]
                pos += take
                self.remaining -= take
                if self.remaining:
                    break
                self.skip = 2
            if self.skip:
                take = min(self.skip, size - pos)
                pos += take
                self.skip -= take
                if self.skip:
                    break
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(bytes(raw[pos:eol]).split(b";", 1)[0] or b"0", 16)
            pos = eol + 2
            if length == 0:  # last chunk
                pos = size
                break
            self.remaining = length
        del raw[:pos]

    def _events(self, now: int) -> None:
        body, start = self.body, 0
        while True:
            end = body.find(b"\n\n", start)
            if end < 0:
                break
            self._event(bytes(body[start:end]), now)
            start = end + 2
        if start:
            del body[:start]

    def _event(self, event: bytes, now: int) -> None:
        if self.finished.done():
            return
        if not self.is_b:
            if self.s.first_event_ns == 0:
                self.s.first_event_ns = now
            match = OPENAI_TOKEN.search(event)
            if match:
                self._token(int(match[1]), 0, now)
            elif event.startswith(b"data: [DONE]"):
                self.s.final = "[DONE]"
                self._finish(now)
            return
        if event.startswith(b":"):
            return  # keepalive comment
        kind, data, event_id = b"", b"", ""
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
            elif line.startswith(b"event: "):
                kind = line[7:]
            elif line.startswith(b"id: "):
                event_id = line[4:].decode()
        if event_id:
            self.s.last_id = event_id
            self.s.first_id = self.s.first_id or event_id
        if self.s.first_event_ns == 0:
            self.s.first_event_ns = now
        if kind == b"delta":
            # A frame may carry several tokens (the worker merges what accumulated).
            match, worker = DELTA_TEXT.search(data), WORKER_STAMP.search(data)
            for stamp in match[1].split() if match else ():
                self._token(int(stamp), int(worker[1]) if worker else 0, now)
        elif kind in (b"done", b"error"):
            payload = json.loads(data)
            reason = payload.get("finish_reason") if kind == b"done" else payload.get("code")
            self.s.final = f"{kind.decode()}:{reason}"
            if kind == b"error":
                self.s.error = self.s.final
            self._finish(now)
        elif kind in (b"retry", b"failover"):
            self.s.anomalies += 1

    def _token(self, stamp: int, worker: int, now: int) -> None:
        s = self.s
        s.tokens += 1
        s.delays.append(now - stamp)
        if worker:
            s.legs.append(worker - stamp)
        if s.first_token_ns == 0:
            s.first_token_ns, s.first_stamp = now, stamp
        else:
            s.gaps.append(now - self.prev)
        self.prev = now
        if self.stop_after is not None and s.tokens >= self.stop_after and not self.reached.done():
            self.reached.set_result(now)

    def _finish(self, now: int) -> None:
        if not self.finished.done():
            self.s.end_ns = now
            self.finished.set_result(None)
        if not self.reached.done():
            self.reached.set_result(0)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_stream(
    target: Target,
    stream: Stream,
    request: bytes,
    *,
    timeout: float,
    stop_after: int | None = None,
) -> SSEConnection | None:
    """Connect and send ``request``; ``None`` (error recorded) when the connection fails."""
    loop = asyncio.get_running_loop()
    host, port = (
        (target.gateway_host, target.gateway_port)
        if stream.arm == B
        else (target.fake_host, target.fake_port)
    )
    stream.start_ns = stream.start_ns or time.monotonic_ns()
    try:
        async with asyncio.timeout(timeout):
            _, proto = await loop.create_connection(
                lambda: SSEConnection(request, stream, stop_after), host, port
            )
    except (OSError, TimeoutError) as exc:
        stream.error, stream.end_ns = f"connect:{type(exc).__name__}", time.monotonic_ns()
        return None
    return proto


async def finish(proto: SSEConnection, timeout: float) -> None:
    """Wait for the final event, then (briefly) for the server to close; then close."""
    try:
        async with asyncio.timeout(timeout):
            await proto.finished
    except TimeoutError:
        proto.s.error = proto.s.error or "timeout"
        proto.s.end_ns = proto.s.end_ns or time.monotonic_ns()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await proto.closed
    proto.close()


async def run_stream(target: Target, arm: str, rid: str, timeout: float) -> Stream:
    stream = Stream(arm, rid)
    request = request_b(target, rid) if arm == B else request_a(target, rid)
    proto = await open_stream(target, stream, request, timeout=timeout)
    if proto is not None:
        await finish(proto, timeout)
    return stream


async def http_request(host: str, port: int, head: str) -> tuple[int, bytes]:
    """A small non-streamed request (cancel): status and body."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode())
        data = await reader.read()
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data.partition(b"\r\n\r\n")[2]


async def cancel_b(target: Target, rid: str) -> int:
    head = (
        f"POST /api/chat/{rid}/cancel HTTP/1.1\r\nHost: {target.gateway_host}\r\n"
        f"Authorization: Bearer {target.api_key}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    status, _ = await http_request(target.gateway_host, target.gateway_port, head)
    return status


# --- rounds and trials --------------------------------------------------------------------


async def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def _lag_monitor(samples: list[int], interval_s: float = 0.01) -> None:
    """Event-loop lag: how late a 10 ms sleep wakes up."""
    while True:
        before = time.monotonic_ns()
        await asyncio.sleep(interval_s)
        samples.append(time.monotonic_ns() - before - int(interval_s * 1e9))


async def run_round(cmd: dict[str, Any]) -> dict[str, Any]:
    """Run this process's slots: each slot starts at its offset and runs its streams in a row."""
    target: Target = cmd["target"]
    arm, t0, timeout, tag = cmd["arm"], cmd["t0_ns"], cmd["timeout_s"], cmd["tag"]
    streams: list[Stream] = []
    lag: list[int] = []

    async def slot(index: int, offset_ns: int, count: int) -> None:
        await _sleep_until(t0 + offset_ns)
        for k in range(count):
            rid = f"bench-{tag}-{index}-{k}-{uuid.uuid4().hex[:8]}"
            streams.append(await run_stream(target, arm, rid, timeout))

    monitor = asyncio.create_task(_lag_monitor(lag))
    try:
        await asyncio.gather(*(slot(i, off, n) for i, off, n in cmd["slots"]))
    finally:
        monitor.cancel()
    return {"streams": streams, "lag_ns": lag}


async def cancel_trial(
    target: Target, arm: str, rid: str, after: int, timeout: float
) -> dict[str, Any]:
    """Cancel after ``after`` tokens. A: close the connection; B: POST cancel (and keep reading)."""
    stream = Stream(arm, rid)
    request = request_b(target, rid) if arm == B else request_a(target, rid)
    proto = await open_stream(target, stream, request, timeout=timeout, stop_after=after)
    result: dict[str, Any] = {"arm": arm, "rid": rid, "cancel_ns": 0, "final_ns": 0, "status": 0}
    if proto is None:
        result["error"] = stream.error
        return result
    try:
        async with asyncio.timeout(timeout):
            await proto.reached
    except TimeoutError:
        stream.error = "timeout"
    if stream.tokens < after or stream.error:
        proto.close()
        result["error"] = stream.error or "ended_early"
        return result
    result["cancel_ns"] = time.monotonic_ns()
    if arm == A:
        proto.close()
        result["status"] = 200
    else:
        result["status"] = await cancel_b(target, rid)
        await finish(proto, timeout)
        result["final"], result["final_ns"] = stream.final, stream.end_ns
    result["error"] = stream.error if arm == B else ""
    return result


async def resume_trial(
    target: Target, rid: str, after: int, gap_s: float, expect: int, timeout: float
) -> dict[str, Any]:
    """Leave after ``after`` tokens, wait ``gap_s``, reconnect with Last-Event-ID; time it."""
    first = Stream(B, rid)
    proto = await open_stream(
        target, first, request_b(target, rid), timeout=timeout, stop_after=after
    )
    result: dict[str, Any] = {"rid": rid, "latency_ns": 0, "replayed": False, "error": ""}
    if proto is None:
        result["error"] = first.error
        return result
    try:
        async with asyncio.timeout(timeout):
            await proto.reached
    except TimeoutError:
        first.error = "timeout"
    proto.close()
    if first.tokens < after or first.error:
        result["error"] = first.error or "ended_early"
        return result
    await asyncio.sleep(gap_s)
    second = Stream(B, rid)
    second.start_ns = time.monotonic_ns()
    request = request_b(target, rid, last_event_id=first.last_id)
    again = await open_stream(target, second, request, timeout=timeout)
    if again is None:
        result["error"] = second.error
        return result
    await finish(again, timeout)
    result["latency_ns"] = (second.first_event_ns - second.start_ns) if second.first_event_ns else 0
    result["replayed"] = 0 < second.first_stamp < second.start_ns
    total = first.tokens + second.tokens
    if second.error or not second.final.startswith("done"):
        result["error"] = second.error or f"final {second.final!r}"
    elif total != expect:
        result["error"] = f"{total} tokens over both connections, expected {expect}"
    return result


async def run_trials(cmd: dict[str, Any]) -> dict[str, Any]:
    """Cancel or resume trials (``rids``: arm and request id), one at a time, spaced out."""
    target: Target = cmd["target"]
    results: list[dict[str, Any]] = []
    for arm, rid in cmd["rids"]:
        if cmd["kind"] == "cancel":
            results.append(await cancel_trial(target, arm, rid, cmd["after"], cmd["timeout_s"]))
        else:
            results.append(
                await resume_trial(
                    target, rid, cmd["after"], cmd["gap_s"], cmd["expect"], cmd["timeout_s"]
                )
            )
        await asyncio.sleep(cmd["spacing_s"])
    return {"trials": results}


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd is None:
            return
        try:
            if cmd["kind"] == "round":
                reply = await run_round(cmd)
            elif cmd["kind"] in ("cancel", "resume"):
                reply = await run_trials(cmd)
            else:
                reply = {"ok": True}
        except Exception as exc:  # reported to the orchestrator, which stops
            reply = {"failure": f"{type(exc).__name__}: {exc}"}
        conn.send(reply)


def client_main(conn: Connection) -> None:
    """Entry point of one client process: one event loop (uvloop when installed)."""
    try:
        import uvloop

        uvloop.run(_serve(conn))
    except ImportError:
        asyncio.run(_serve(conn))

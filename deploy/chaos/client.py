"""The chaos run's clients: each planned request is read by one client (sometimes by a second,
duplicate one), which records every event, reconnects, resumes and cancels as planned.

A client behaves like a browser's EventSource: it reconnects on its own after a broken
connection, with ``Last-Event-ID``; it resumes on the other gateway; it retries a start or a
cancel that a restarting system refused with a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from deploy.chaos.history import CancelCall, Connection, Seen, Session, now_ns
from deploy.chaos.plan import SSE_KINDS, CancelPlan, DisconnectPlan, Plan, RequestPlan, model_of
from echotune.common.messages import ErrorCode
from echotune.fake_llm import FakeUpstream

SESSION_DEADLINE_S = 60.0
RETRY_DELAY_S = 0.3
REFUSED_TRIES = 5
ANSWER_ERROR_CODES = frozenset(code.value for code in ErrorCode)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str | None, str]]:
    """``(event, id, data)`` of each SSE event; comments (keep-alives) are skipped."""
    event: str | None = None
    event_id: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data or event:
                yield event, event_id, "\n".join(data)
            event, event_id, data = None, None, []
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


@dataclass
class SseState:
    """What one SSE client knows and still plans to do."""

    gateway: int
    disconnects: list[DisconnectPlan]
    cancel: CancelPlan | None
    last_id: str | None = None
    events: int = 0
    deltas: int = 0
    gap_ms: int = 0
    cancel_task: asyncio.Task[None] | None = None
    timer: asyncio.Task[None] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Traffic:
    """Runs the plan's requests against the gateways and keeps every session."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        upstream: FakeUpstream,
        gateway_url: Callable[[int], str],
        gateways: int,
        stored: Callable[[str], Awaitable[None]],
    ) -> None:
        self.http, self.upstream = http, upstream
        self.gateway_url, self.gateways = gateway_url, gateways
        self.sessions: list[Session] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stored = stored

    async def run(self, plan: Plan, t0_ns: int) -> None:
        """Start each request at its planned time (returns once all are started)."""
        for request in plan.requests:
            delay = (t0_ns + request.at_s * 1e9 - now_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            self._tasks.append(asyncio.create_task(self._request(request)))

    async def drain(self) -> None:
        """Wait until every session has its final event or gave up (each has a deadline)."""
        await asyncio.gather(*self._tasks)

    def _other(self, gateway: int) -> int:
        return (gateway + 1) % self.gateways

    async def _request(self, request: RequestPlan) -> None:
        """Run the request's sessions, then keep what Redis stored for it (before it expires)."""
        await self._script(request)
        if request.kind not in SSE_KINDS:
            await self._v1_session(request)
        else:
            runs = [self._sse_session(request, "primary")]
            if request.duplicate_after_ms is not None:
                runs.append(self._duplicate(request, request.duplicate_after_ms))
            await asyncio.gather(*runs)
        await self._stored(request.request_id)

    async def _duplicate(self, request: RequestPlan, after_ms: int) -> None:
        await asyncio.sleep(after_ms / 1000)
        await self._sse_session(request, "duplicate")

    async def _script(self, request: RequestPlan) -> None:
        for _ in range(20):
            with contextlib.suppress(httpx.HTTPError):
                await self.upstream.script(request.request_id, *request.steps)
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("the fake upstream does not answer")

    # --- the SSE doors ----------------------------------------------------------------------

    async def _sse_session(self, request: RequestPlan, role: str) -> None:
        primary = role == "primary"
        session = Session(request.request_id, request.kind, role, now_ns())
        self.sessions.append(session)
        state = SseState(
            gateway=request.gateway if primary else request.duplicate_gateway,
            disconnects=list(request.disconnects) if primary else [],
            cancel=request.cancel if primary else None,
        )
        deadline = session.t_begin_ns + SESSION_DEADLINE_S * 1e9
        accepted, refused = False, 0
        try:
            while True:
                left = (deadline - now_ns()) / 1e9
                if left <= 0:
                    session.gave_up = f"no final event within {SESSION_DEADLINE_S:.0f} s"
                    break
                conn = Connection(
                    "resume" if accepted else "start", state.gateway, now_ns(), state.last_id
                )
                session.connections.append(conn)
                await self._sse_connection(request, session, conn, state, left)
                conn.t_close_ns = now_ns()
                accepted = accepted or conn.status == 200
                if conn.end == "final":
                    break
                if conn.end == "refused" and conn.status is not None and conn.status < 500:
                    refused += 1
                    if conn.status == 204 or refused >= REFUSED_TRIES:
                        session.gave_up = f"refused: HTTP {conn.status} {conn.error or ''}"
                        break
                pause = state.gap_ms / 1000 if conn.end == "disconnect" else RETRY_DELAY_S
                state.gap_ms = 0
                await asyncio.sleep(pause)
                state.gateway = self._other(state.gateway)
        finally:
            if state.timer is not None:
                state.timer.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)

    async def _sse_connection(
        self,
        request: RequestPlan,
        session: Session,
        conn: Connection,
        state: SseState,
        left_s: float,
    ) -> None:
        try:
            async with asyncio.timeout(left_s), self._open_sse(request, conn) as response:
                conn.status = response.status_code
                if response.status_code != 200:
                    conn.error = (await response.aread()).decode(errors="replace")[:300]
                    conn.end = "refused"
                    return
                conn.end = "eof"
                async for event, event_id, data in sse_events(response):
                    seen = Seen(now_ns(), len(session.connections) - 1, event or "message",
                                event_id, json.loads(data) if data else {})  # fmt: skip
                    session.events.append(seen)
                    if self._absorb(request, session, state, seen):
                        conn.end = "final" if seen.is_final else "disconnect"
                        return
        except TimeoutError:
            conn.end = "deadline"
        except httpx.HTTPError as exc:
            conn.end, conn.error = "broken", f"{type(exc).__name__}: {exc}"[:300]

    def _open_sse(
        self, request: RequestPlan, conn: Connection
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        url = f"{self.gateway_url(conn.gateway)}/api/chat/stream"
        headers = {"Last-Event-ID": conn.last_event_id} if conn.last_event_id else {}
        if conn.purpose == "resume":
            return self.http.stream(
                "GET", url, params={"request_id": request.request_id}, headers=headers
            )
        optional = {"provider": request.provider, "conversation_id": request.conversation_id}
        chosen = {name: value for name, value in optional.items() if value}
        if request.kind == "sse_get":
            params = {"message": request.message, "request_id": request.request_id, **chosen}
            return self.http.stream("GET", url, params=params, headers=headers)
        body: dict[str, Any] = {"message": request.message, **chosen}
        if request.max_tokens:
            body["options"] = {"max_tokens": request.max_tokens}
        headers["X-Request-Id"] = request.request_id
        return self.http.stream("POST", url, json=body, headers=headers)

    def _absorb(self, request: RequestPlan, session: Session, state: SseState, seen: Seen) -> bool:
        """Take in one event; True when the connection must end (final event or disconnect)."""
        state.events += 1
        state.last_id = seen.id or state.last_id
        state.deltas += seen.type == "delta"
        self._maybe_cancel(request, session, state, seen)
        if seen.is_final:
            return True
        planned = state.disconnects
        if planned and state.cancel_task is None and state.events >= planned[0].after_events:
            state.gap_ms = planned.pop(0).gap_ms
            return True
        return False

    def _maybe_cancel(
        self, request: RequestPlan, session: Session, state: SseState, seen: Seen
    ) -> None:
        plan = state.cancel
        if plan is None or state.cancel_task is not None or seen.is_final:
            return
        if plan.trigger == "after_ms" and seen.type == "start" and state.timer is None:
            state.timer = asyncio.create_task(self._cancel_later(request, session, state, plan))
        fire = (plan.trigger == "after_start" and seen.type == "start") or (
            plan.trigger == "after_deltas" and state.deltas >= plan.value
        )
        if fire:
            self._fire_cancel(request, session, state, plan)

    async def _cancel_later(
        self, request: RequestPlan, session: Session, state: SseState, plan: CancelPlan
    ) -> None:
        await asyncio.sleep(plan.value / 1000)
        if not session.finals:
            self._fire_cancel(request, session, state, plan)

    def _fire_cancel(
        self, request: RequestPlan, session: Session, state: SseState, plan: CancelPlan
    ) -> None:
        state.cancel_task = asyncio.create_task(self._cancel(request, session, plan.gateway))
        state.tasks.append(state.cancel_task)

    async def _cancel(self, request: RequestPlan, session: Session, gateway: int) -> None:
        failures: list[str] = []
        deadline = now_ns() + SESSION_DEADLINE_S * 1e9
        while now_ns() < deadline:
            sent = now_ns()
            url = f"{self.gateway_url(gateway)}/api/chat/{request.request_id}/cancel"
            try:
                response = await self.http.post(url)
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__} from gateway {gateway}")
            else:
                call = CancelCall(gateway, sent, now_ns(), response.status_code, None, failures)
                if response.status_code in (200, 202):
                    call.state = response.json().get("status")
                    session.cancel = call
                    return
                failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                if response.status_code < 500:
                    session.cancel = call
                    return
            gateway = self._other(gateway)
            await asyncio.sleep(0.2)
        session.cancel = CancelCall(gateway, 0, 0, None, None, failures)

    # --- the OpenAI door --------------------------------------------------------------------

    async def _v1_session(self, request: RequestPlan) -> None:
        session = Session(request.request_id, request.kind, "primary", now_ns())
        self.sessions.append(session)
        gateway, refused = request.gateway, 0
        deadline = session.t_begin_ns + SESSION_DEADLINE_S * 1e9
        while True:
            left = (deadline - now_ns()) / 1e9
            if left <= 0:
                session.gave_up = f"no final event within {SESSION_DEADLINE_S:.0f} s"
                return
            conn = Connection("start", gateway, now_ns())
            session.connections.append(conn)
            await self._v1_connection(request, session, conn, left)
            conn.t_close_ns = now_ns()
            if conn.end == "final":
                return
            if conn.end == "refused" and conn.status is not None and conn.status < 500:
                refused += 1
                if refused >= REFUSED_TRIES:
                    session.gave_up = f"refused: HTTP {conn.status} {conn.error or ''}"
                    return
            await asyncio.sleep(RETRY_DELAY_S)
            gateway = self._other(gateway)

    def _v1_body(self, request: RequestPlan) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.provider or model_of("alpha"),
            "messages": [{"role": "user", "content": request.message}],
            "stream": request.kind == "v1_stream",
        }
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        return body

    async def _v1_connection(
        self, request: RequestPlan, session: Session, conn: Connection, left_s: float
    ) -> None:
        url = f"{self.gateway_url(conn.gateway)}/v1/chat/completions"
        headers = {"X-Request-Id": request.request_id}
        body = self._v1_body(request)
        index = len(session.connections) - 1
        try:
            async with (
                asyncio.timeout(left_s),
                self.http.stream(
                    "POST", url, json=body, headers=headers, timeout=self._v1_timeout(body)
                ) as response,
            ):
                conn.status = response.status_code
                if response.status_code != 200 or not body["stream"]:
                    raw = await response.aread()
                    conn.end = self._v1_answer(session, conn, index, raw)
                    return
                conn.end = "eof"
                async for _, _, data in sse_events(response):
                    if data == "[DONE]":
                        conn.end = "final" if session.finals else "eof"
                        return
                    for seen in _chunk_events(json.loads(data), index):
                        session.events.append(seen)
        except TimeoutError:
            conn.end = "deadline"
        except httpx.HTTPError as exc:
            conn.end, conn.error = "broken", f"{type(exc).__name__}: {exc}"[:300]

    @staticmethod
    def _v1_timeout(body: dict[str, Any]) -> httpx.Timeout:
        """A whole answer comes at once, after the answer ended: wait for it as an OpenAI SDK
        would (closing the connection cancels the answer); a stream sends keep-alives."""
        return httpx.Timeout(10.0 if body["stream"] else SESSION_DEADLINE_S, connect=5.0)

    def _v1_answer(self, session: Session, conn: Connection, index: int, raw: bytes) -> str:
        """A whole (non-streamed) answer, or an error answer; how the connection ended."""
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if conn.status == 200 and isinstance(payload, dict) and payload.get("choices"):
            choice = payload["choices"][0]
            content = choice["message"]["content"] or ""
            session.events.append(Seen(now_ns(), index, "delta", None, {"delta": content}))
            finish = {"finish_reason": choice["finish_reason"]}
            session.events.append(Seen(now_ns(), index, "done", None, finish))
            return "final"
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict) and error.get("code") in ANSWER_ERROR_CODES:
            data = {**error, "status": conn.status}
            session.events.append(Seen(now_ns(), index, "error", None, data))
            return "final"
        conn.error = raw.decode(errors="replace")[:300]
        return "refused"


def _chunk_events(chunk: dict[str, Any], index: int) -> list[Seen]:
    if "error" in chunk:
        return [Seen(now_ns(), index, "error", None, chunk["error"])]
    seen: list[Seen] = []
    for choice in chunk.get("choices") or ():
        text = (choice.get("delta") or {}).get("content")
        if text:
            seen.append(Seen(now_ns(), index, "delta", None, {"delta": text}))
        if choice.get("finish_reason"):
            data = {"finish_reason": choice["finish_reason"]}
            seen.append(Seen(now_ns(), index, "done", None, data))
    return seen

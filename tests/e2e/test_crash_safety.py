"""Worker crashes, graceful shutdown, back-pressure and the server-side deadline."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from echotune.fake_llm import FakeUpstream
from tests.support.sse import Frame, frames, read_stream
from tests.support.stack import Stack, start_stack


def worker_running(stack: Stack, rid: str):  # type: ignore[no-untyped-def]
    (worker,) = [w for w in stack.workers if f"[rid={rid}] job taken" in w.output()]
    return worker


async def stream_until(
    client: httpx.AsyncClient, stack: Stack, rid: str, deltas: int, action
) -> tuple[list[Frame], float]:  # type: ignore[no-untyped-def]
    """Read a stream; after ``deltas`` deltas run ``action`` once; return frames and its time."""
    collected: list[Frame] = []
    acted_at = 0.0
    params = {"message": "hi", "request_id": rid}
    async with client.stream("GET", f"{stack.url}/api/chat/stream", params=params) as response:
        async for frame in frames(response):
            if frame.event:
                collected.append(frame)
            if frame.event == "delta" and sum(f.event == "delta" for f in collected) == deltas:
                acted_at = time.monotonic()
                await action()
    return collected, acted_at


@pytest.mark.cluster
async def test_killed_worker_job_is_reclaimed_and_restarted(
    redis_server_url: str,
    fake_llm: str,
    client: httpx.AsyncClient,
    upstream: FakeUpstream,
    rid: str,
) -> None:
    stack = await start_stack(
        redis_server_url, fake_llm, workers=2, ECHOTUNE_WORKER_RECLAIM_IDLE_S="2"
    )
    try:
        await upstream.script(
            rid,
            {"tokens": [f"old{i} " for i in range(200)], "pace_ms": 30},
            {"tokens": ["fresh ", "answer"]},
        )

        async def kill() -> None:
            worker_running(stack, rid).kill()

        events, killed_at = await stream_until(client, stack, rid, 3, kill)
        failover = next(e for e in events if e.event == "failover")
        waited = failover.at - killed_at
        print(f"SIGKILLed worker: client learnt after {waited:.2f} s (reclaim idle 2 s)")
        assert failover.json["discard_partial"] is True
        assert failover.json["reason"] == "worker_lost"
        assert waited < 2 + 3
        after = events[events.index(failover) + 1 :]
        assert "".join(e.json["delta"] for e in after if e.event == "delta") == "fresh answer"
        assert events[-1].event == "done"
        assert events[-1].json["finish_reason"] == "stop"
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids))
    finally:
        await stack.stop()


async def test_sigterm_lets_running_answers_finish(
    redis_server_url: str,
    fake_llm: str,
    client: httpx.AsyncClient,
    upstream: FakeUpstream,
    rid: str,
) -> None:
    stack = await start_stack(redis_server_url, fake_llm, workers=1, ECHOTUNE_WORKER_DRAIN_S="10")
    try:
        tokens = [f"t{i} " for i in range(20)]
        await upstream.script(rid, {"tokens": tokens, "pace_ms": 60})
        exit_codes = []

        async def terminate() -> None:
            stack.workers[0].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

        events, _ = await stream_until(client, stack, rid, 2, terminate)
        exit_codes.append(await stack.workers[0].stop())
        assert "".join(e.json["delta"] for e in events if e.event == "delta") == "".join(tokens)
        assert events[-1].json["finish_reason"] == "stop"
        assert exit_codes[0] in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert "shut down gracefully" in stack.workers[0].output()
    finally:
        await stack.stop()


async def test_sigterm_ends_what_cannot_finish_with_an_error(
    redis_server_url: str,
    fake_llm: str,
    client: httpx.AsyncClient,
    upstream: FakeUpstream,
    rid: str,
) -> None:
    stack = await start_stack(redis_server_url, fake_llm, workers=1, ECHOTUNE_WORKER_DRAIN_S="1")
    try:
        await upstream.script(rid, {"tokens": [f"t{i} " for i in range(500)], "pace_ms": 20})

        async def terminate() -> None:
            stack.workers[0].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

        events, signalled_at = await stream_until(client, stack, rid, 2, terminate)
        assert events[-1].event == "error"
        assert events[-1].json["code"] == "shutdown"
        assert events[-1].json["retryable"] is True
        assert events[-1].at - signalled_at < 1 + 2
        assert (await upstream.requests(rid))[0]["closed_by_client"] is True
    finally:
        await stack.stop()


async def test_backlog_limit_answers_429(
    redis_server_url: str, fake_llm: str, client: httpx.AsyncClient
) -> None:
    stack = await start_stack(
        redis_server_url,
        fake_llm,
        workers=0,
        ECHOTUNE_GATEWAY_MAX_BACKLOG="2",
        ECHOTUNE_GATEWAY_MAX_STREAM_S="1",
    )
    try:
        url = f"{stack.url}/api/chat/stream"
        for n in range(2):
            opened = await read_stream(
                client, "GET", url, params={"message": f"q{n}"}, stop_after=1
            )
            assert opened.status == 200
        refused = await client.get(url, params={"message": "one too many"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "overloaded"
        # With no worker at all, a stream still ends: the gateway's deadline closes it.
        started = time.monotonic()
        stuck = await read_stream(
            client, "GET", url, params={"request_id": opened.events[0].json["request_id"]}
        )
        assert stuck.last.event == "error"
        assert stuck.last.json["code"] == "deadline_exceeded"
        # 1 s to the deadline plus the 3 s resume window; without it the stream never ends.
        assert time.monotonic() - started < 15
    finally:
        await stack.stop()

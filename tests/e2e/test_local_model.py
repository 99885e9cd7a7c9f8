"""A real model behind echotune: llama.cpp's server with SmolLM2-135M, as `make dev-local` runs it.

Skipped (with the reason) unless the local-model group is installed; CI installs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from deploy.bench.cpu_trace import CpuTrace
from deploy.local import local_model
from deploy.local.processes import ServiceProcess
from tests.support.sse import Frame, StreamResult, frames, read_stream
from tests.support.stack import Stack, start_stack
from tests.support.telemetry import TelemetryHarness

# start-up loads the model; answers take seconds on a busy 2-core machine
pytestmark = [pytest.mark.local_model, pytest.mark.serial, pytest.mark.timeout(300)]

# At temperature 0 SmolLM2-135M goes on with this far beyond LONG_TOKENS (checked by the test).
LONG_PROMPT = "Write a very long story about a musician who travels the world, with many chapters."
LONG_TOKENS = 160
CANCEL_AFTER = 8
# CPU the server may spend after the cancel, in tokens' worth: the token being computed and the
# next one; generous, since the premise guarantees ~150 more tokens if generation went on.
MAX_TOKENS_AFTER_CANCEL = 10


@dataclass
class LocalServer:
    proc: ServiceProcess
    base_url: str


@pytest.fixture(scope="module")
async def llama() -> AsyncIterator[LocalServer]:
    proc, base_url = await local_model.start_server()
    yield LocalServer(proc, base_url)
    await proc.stop()


@pytest.fixture(scope="module")
async def harness(redis_server_url: str, mongo_server_url: str) -> AsyncIterator[TelemetryHarness]:
    created = await TelemetryHarness.create(redis_server_url, mongo_server_url)
    yield created
    await created.close()


@pytest.fixture(scope="module")
async def lstack(
    harness: TelemetryHarness, redis_server_url: str, llama: LocalServer
) -> AsyncIterator[Stack]:
    """Gateway, worker and telemetry writer with the local model as their only real provider,
    configured as `make dev-local` does."""
    running = await start_stack(
        redis_server_url,
        "http://127.0.0.1:9",  # no fake upstream here
        providers=[local_model.provider(llama.base_url)],
        ECHOTUNE_DEFAULT_PROVIDER=local_model.PROVIDER,
        ECHOTUNE_FALLBACKS="[]",
        ECHOTUNE_NAMESPACE=harness.namespace,
        ECHOTUNE_MONGODB_URL=harness.mongo_url,
        ECHOTUNE_WORKER_CONCURRENCY=str(local_model.CONCURRENCY),
    )
    telemetry, _ = await harness.start()
    yield running
    await telemetry.stop()
    await running.stop()


def chat(message: str, **options: Any) -> dict[str, Any]:
    return {"message": message, "options": {"temperature": 0, "use_context": False, **options}}


async def ask(
    client: httpx.AsyncClient, stack: Stack, rid: str, body: dict[str, Any]
) -> StreamResult:
    return await read_stream(
        client, "POST", f"{stack.url}/api/chat/stream", json=body, headers={"X-Request-Id": rid}
    )


async def attempt_document(harness: TelemetryHarness, rid: str) -> dict[str, Any]:
    """The telemetry document of ``rid``'s one attempt, once the writer has stored it."""
    collection = harness.db["provider_telemetry"]
    async with asyncio.timeout(30):
        while (doc := await collection.find_one({"requestId": rid})) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # the writer batches; nothing to await from here
    return doc


async def test_a_real_answer_streams_through_the_gateway_and_is_recorded(
    lstack: Stack, harness: TelemetryHarness, client: httpx.AsyncClient, rid: str
) -> None:
    result = await ask(
        client, lstack, rid, chat("Recommend three jazz albums for a rainy evening.")
    )

    assert result.status == 200
    assert result.last.event == "done", result.last.data
    done = result.last.json
    assert done["finish_reason"] in ("stop", "length")
    assert (done["provider"], done["model"]) == (local_model.PROVIDER, local_model.model_name())
    assert done["attempts"] == 1
    deltas = result.of("delta")
    assert len(deltas) >= 5, result.text
    assert len(set(result.text.lower().split())) >= 5, result.text  # words, not one token echoed
    print(f"\nlocal model answered ({len(deltas)} deltas): {result.text!r}")

    report = (await client.get(f"{lstack.url}/api/providers/health")).json()
    health = next(p for p in report["providers"] if p["id"] == local_model.PROVIDER)
    assert health["breaker"]["state"] == "closed"
    assert health["live"]["requests"] >= 1

    doc = await attempt_document(harness, rid)
    assert doc["provider"] == local_model.PROVIDER
    assert doc["model"] == local_model.model_name()
    assert doc["success"] is True
    assert doc["errorCode"] is None
    assert doc["tokensOut"] == len(deltas)
    assert doc["ttftMs"] is not None
    assert doc["ttftMs"] <= doc["latencyMs"]


async def test_cancel_mid_answer_stops_the_server_generating(
    lstack: Stack,
    harness: TelemetryHarness,
    llama: LocalServer,
    client: httpx.AsyncClient,
    rid: str,
) -> None:
    # premise: left alone, this answer runs to max_tokens (so a cancel has work to stop); and
    # what one token costs the server in CPU time, over the whole answer (its prompt left out)
    trace = CpuTrace(llama.proc.pid)
    sampling = asyncio.create_task(trace.run())
    try:
        whole = await ask(client, lstack, f"{rid}-whole", chat(LONG_PROMPT, max_tokens=LONG_TOKENS))
    finally:
        sampling.cancel()
    assert whole.last.json["finish_reason"] == "length", whole.text
    deltas = whole.of("delta")
    assert len(deltas) >= LONG_TOKENS - 10
    # a frame's ``at`` is when its parsing began: deltas[1].at is when deltas[0] had arrived
    per_token = trace.per_token(deltas[1].at, deltas[-1].at, len(deltas) - 2)

    trace = CpuTrace(llama.proc.pid)
    sampling = asyncio.create_task(trace.run())
    logged = len(llama.proc.lines)
    try:
        received, arrivals, cancelled_at = await stream_and_cancel(client, lstack, rid)
    finally:
        sampling.cancel()
    final = [f for f in received if f.event in ("done", "error")]
    assert [(f.event, f.json.get("finish_reason")) for f in final] == [("done", "cancelled")]

    idle_from = await trace.until_idle(after=cancelled_at)
    stopped_at = trace.busy_until(cancelled_at, idle_from)
    after_cancel = trace.at(idle_from) - trace.at(cancelled_at)
    tokens_after = after_cancel / per_token
    print(
        f"\ncancel → CPU the server spent after it ≈ {tokens_after:.1f} tokens' worth"
        f" ({after_cancel / 1e6:.1f} ms at {per_token / 1e6:.1f} ms/token); last busy moment"
        f" {(stopped_at - cancelled_at) * 1000:.0f} ms after it; {len(arrivals)} deltas arrived"
    )
    assert tokens_after <= MAX_TOKENS_AFTER_CANCEL
    await llama.proc.wait_for_line(r"Disconnected from client", timeout=10, start=logged)

    doc = await attempt_document(harness, rid)
    assert doc["success"] is False
    assert doc["errorCode"] == "cancelled"
    assert doc["tokensOut"] >= CANCEL_AFTER


async def stream_and_cancel(
    client: httpx.AsyncClient, stack: Stack, rid: str
) -> tuple[list[Frame], list[float], float]:
    """Stream the long answer, cancel it after ``CANCEL_AFTER`` deltas, read it to its end: the
    frames, when each delta arrived, when the cancel was sent."""
    received: list[Frame] = []
    arrivals: list[float] = []
    cancelled_at = 0.0
    async with client.stream(
        "POST",
        f"{stack.url}/api/chat/stream",
        json=chat(LONG_PROMPT, max_tokens=LONG_TOKENS),
        headers={"X-Request-Id": rid},
    ) as response:
        async for frame in frames(response):
            received.append(frame)
            if frame.event == "delta":
                arrivals.append(time.monotonic())
            if not cancelled_at and len(arrivals) == CANCEL_AFTER:
                cancelled_at = time.monotonic()
                answer = await client.post(f"{stack.url}/api/chat/{rid}/cancel")
                assert answer.status_code == 202, answer.text
    return received, arrivals, cancelled_at


async def test_concurrent_answers_queue_and_all_complete(
    lstack: Stack, llama: LocalServer, client: httpx.AsyncClient, rid: str
) -> None:
    """More chats than the worker sends at once: the server answers one at a time and none is
    cut short (by default llama.cpp's server would end the running answer early)."""
    logged = len(llama.proc.lines)
    count, tokens = local_model.CONCURRENCY + 2, 24
    results = await asyncio.gather(
        *(
            ask(client, lstack, f"{rid}-{n}", chat(LONG_PROMPT, max_tokens=tokens))
            for n in range(count)
        )
    )
    for result in results:
        assert result.last.event == "done", result.last.data
        assert result.last.json["finish_reason"] == "length", result.text
        assert result.last.json["attempts"] == 1
        assert not result.of("retry")
    firsts = sorted(r.of("delta")[0].at for r in results)
    print(
        f"\n{count} concurrent answers; first tokens {[round(t - firsts[0], 2) for t in firsts]} s"
    )
    assert not [line for line in llama.proc.lines[logged:] if "Disconnected" in line]

"""500 concurrent streams through one gateway: no error, memory flat after the warm-up.

``make load`` runs it for ``LOAD_SECONDS`` (300); ``make test`` for 30 s."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx
import pytest

from tests.e2e.test_capacity import rss_kib
from tests.support.sse import read_stream
from tests.support.stack import AUTH, start_stack

STREAMS = 500
SECONDS = float(os.environ.get("ECHOTUNE_LOAD_SECONDS", "30"))
TOKENS = [f"t{i} " for i in range(30)]

pytestmark = [pytest.mark.load, pytest.mark.serial, pytest.mark.timeout(SECONDS + 120)]


async def test_500_streams_without_error_and_flat_memory(
    redis_server_url: str, fake_llm: str
) -> None:
    stack = await start_stack(
        redis_server_url,
        fake_llm,
        workers=2,
        ECHOTUNE_WORKER_CONCURRENCY=str(STREAMS),
        ECHOTUNE_GATEWAY_HEARTBEAT_S="5",
        ECHOTUNE_GATEWAY_MAX_BACKLOG="100000",
        ECHOTUNE_RESUME_WINDOW_S="30",  # the production default, not the tests' short one
    )
    await httpx.AsyncClient().put(
        f"{fake_llm}/_control/default", json={"tokens": TOKENS, "pace_ms": 200, "ttft_ms": 100}
    )
    # Idle connections expire before uvicorn closes them (5 s): no reuse race on a closed one.
    limits = httpx.Limits(
        max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10, keepalive_expiry=2
    )
    gateway = stack.gateways[0][0]
    counts = {"ok": 0, "errors": 0}
    kinds: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    try:
        async with httpx.AsyncClient(headers=AUTH, limits=limits, timeout=60) as client:
            deadline = time.monotonic() + SECONDS

            async def loop(n: int) -> None:
                await asyncio.sleep(n * 0.01)  # stagger the starts
                while time.monotonic() < deadline:
                    try:
                        result = await read_stream(
                            client,
                            "GET",
                            f"{stack.url}/api/chat/stream",
                            params={"message": "load", "request_id": f"load-{uuid.uuid4().hex}"},
                        )
                    except httpx.HTTPError as exc:
                        kind = type(exc).__name__
                    else:
                        ok = result.status == 200 and result.text == "".join(TOKENS)
                        last = result.events[-1].data[:150] if result.events else ""
                        kind = "ok" if ok else f"{result.status}:{last}:{len(result.text)}"
                    kinds[kind] = kinds.get(kind, 0) + 1
                    counts["ok" if kind == "ok" else "errors"] += 1

            async def sample() -> None:
                while time.monotonic() < deadline:
                    samples.append((time.monotonic(), rss_kib(gateway.pid)))
                    await asyncio.sleep(2)

            await asyncio.gather(sample(), *(loop(n) for n in range(STREAMS)))
    finally:
        await httpx.AsyncClient().put(f"{fake_llm}/_control/default", json={})
        await stack.stop()
    warm = [rss for at, rss in samples if at >= samples[0][0] + SECONDS / 3]
    print(
        f"{STREAMS} streams x {SECONDS:.0f} s: {counts['ok']} answers, {counts['errors']} errors; "
        f"gateway RSS after warm-up {min(warm) // 1024}-{max(warm) // 1024} MiB"
    )
    assert counts["errors"] == 0, kinds
    assert counts["ok"] >= STREAMS
    assert max(warm) <= min(warm) * 1.15, "memory is flat after warm-up"

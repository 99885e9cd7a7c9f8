"""One gateway process holds a thousand concurrent streams with little memory each."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import AUTH, start_stack

STREAMS = 1000
pytestmark = [pytest.mark.serial, pytest.mark.timeout(400)]
TOKENS = ["slow", " and", " steady"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _until_opened(
    opened: asyncio.Event, tasks: list[asyncio.Task[str]], timeout_s: float
) -> None:
    """Wait until every stream has started; a stream that failed fails the test at once."""
    waiter = asyncio.create_task(opened.wait())
    pending: set[asyncio.Task[Any]] = {waiter, *tasks}
    try:
        async with asyncio.timeout(timeout_s):
            while not opened.is_set():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a failed stream raises its own error, not a timeout
    finally:
        waiter.cancel()


async def test_one_gateway_holds_a_thousand_streams(redis_server_url: str, fake_llm: str) -> None:
    stack = await start_stack(
        redis_server_url,
        fake_llm,
        workers=1,
        ECHOTUNE_WORKER_CONCURRENCY=str(STREAMS),
        ECHOTUNE_GATEWAY_HEARTBEAT_S="5",
        ECHOTUNE_RESUME_WINDOW_S="30",  # the production default, not the tests' short one
    )
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    try:
        gateway = stack.gateways[0][0]
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(120.0), limits=limits, headers=AUTH
        ) as client:
            rids = [f"cap-{uuid.uuid4().hex}" for _ in range(STREAMS)]
            # Every upstream answer waits 4 s before its first token: all streams are open at once.
            await asyncio.gather(
                *(
                    client.put(
                        f"{fake_llm}/_control/scripts/{rid}",
                        json={"attempts": [{"tokens": TOKENS, "ttft_ms": 4000, "pace_ms": 200}]},
                    )
                    for rid in rids
                )
            )
            before = rss_kib(gateway.pid)
            opened = asyncio.Event()
            started = 0

            async def one(rid: str) -> str:
                nonlocal started
                async with client.stream(
                    "GET",
                    f"{stack.url}/api/chat/stream",
                    params={"message": "hi", "request_id": rid},
                ) as response:
                    assert response.status_code == 200
                    text, seen_start = "", False
                    async for line in response.aiter_lines():
                        if line.startswith("event: start") and not seen_start:
                            seen_start = True
                            started += 1
                            if started == STREAMS:
                                opened.set()
                        if line.startswith('data: {"delta"'):
                            text += json.loads(line[6:])["delta"]
                        if line.startswith("event: done"):
                            return text
                return text

            tasks = [asyncio.create_task(one(rid)) for rid in rids]
            await _until_opened(opened, tasks, timeout_s=240)  # generous: a loaded machine is slow
            during = rss_kib(gateway.pid)
            texts = await asyncio.gather(*tasks)
        per_stream = (during - before) / STREAMS
        print(
            f"{STREAMS} open streams: gateway RSS {before} -> {during} KiB, "
            f"{per_stream:.1f} KiB per stream"
        )
        assert texts == ["".join(TOKENS)] * STREAMS
        assert per_stream <= 50
    finally:
        await stack.stop()

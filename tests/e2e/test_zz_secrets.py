"""Runs last: no secret appears in the logs, error bodies or telemetry of its worker's run."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.fake_llm import FakeUpstream
from tests.support.sse import read_stream
from tests.support.stack import API_KEY, PROVIDER_SECRET, Stack

SECRETS = (PROVIDER_SECRET, API_KEY, API_KEY.rsplit("_", 1)[-1])


async def telemetry_with(stack: Stack, rid: str, attempts: int) -> list[Any]:
    """Every telemetry entry, read until ``attempts`` of them are about ``rid`` (they are
    published in the background, after the answer)."""
    raw = Redis.from_url(stack.redis_url)  # telemetry entries are binary FastStream messages
    key, entries, last = Keys(stack.namespace).telemetry, list[Any](), "0-0"
    try:
        async with asyncio.timeout(10):
            while sum(rid in repr(entry) for entry in entries) < attempts:
                for _, read in await raw.xread({key: last}, block=1000):
                    entries += read
                    last = read[-1][0]
    finally:
        await raw.aclose()
    return entries


async def test_no_secret_leaks_anywhere(
    stack: Stack, client: httpx.AsyncClient, upstream: FakeUpstream, rid: str
) -> None:
    # An upstream that echoes the key it was sent, as real providers do on a 401.
    leak = {"error": {"message": f"Incorrect API key provided: {PROVIDER_SECRET}"}}
    await upstream.script(rid, {"status": 401, "error_body": leak})
    result = await read_stream(
        client,
        "GET",
        f"{stack.url}/api/chat/stream",
        params={"message": "hi", "request_id": rid, "provider": "flaky"},
    )
    assert result.last.event in ("error", "done")
    # The worker's log of that leaking 401 (the last provider it tried) is read before looking.
    await stack.wait_for_log(rf"\[rid={rid}\] provider fake-anthropic gave up: http_401")
    bodies = [result.last.data]
    async with httpx.AsyncClient(base_url=stack.url) as anonymous:
        wrong_key = {"Authorization": f"Bearer {API_KEY}x"}
        bodies.append((await anonymous.get("/api/providers", headers=wrong_key)).text)
    telemetry = await telemetry_with(stack, rid, attempts=2)  # flaky's and the fallback's
    haystacks = {
        "service logs": stack.logs(),
        "error bodies": "\n".join(bodies),
        "telemetry": repr(telemetry) + f" ({len(telemetry)} events)",
    }
    for where, text in haystacks.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked into {where}"

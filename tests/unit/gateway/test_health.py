"""The gateway's probes: readiness says at once when Redis does not answer."""

from __future__ import annotations

import asyncio
import time

import httpx
from fastapi import FastAPI

from echotune.common.redis import create_redis
from echotune.gateway.deps import _redis as redis_of
from tests.support.flaky_proxy import reply_dropping_proxy


async def test_readiness_is_refused_within_seconds_when_redis_stops_answering(
    gateway: FastAPI, redis_server_url: str
) -> None:
    """A stopped Redis (SIGSTOP: connections open, no reply) held /readyz 25 s, then said
    ready: the client's socket timeout times its retries, past any probe's timeout."""
    async with reply_dropping_proxy(redis_server_url) as proxy:
        proxy.stop_reading()
        silent = create_redis(proxy.url)
        gateway.dependency_overrides[redis_of] = lambda: silent
        transport = httpx.ASGITransport(app=gateway)
        began = time.monotonic()
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                async with asyncio.timeout(10):
                    response = await client.get("/readyz")
        finally:
            gateway.dependency_overrides.clear()
            await silent.aclose()
    assert time.monotonic() - began < 5
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "redis_unavailable"

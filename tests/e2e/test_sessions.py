"""Issue 16: browser sessions end server-side, on logout and when their API key is revoked."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.gateway.auth.keys import ApiKeyStore
from tests.support.stack import Stack, start_stack

COOKIE = "echotune_session"
APIKEY_CLI = str(Path(sys.executable).parent / "echotune-apikey")


@pytest.fixture(scope="module")
async def gateways(redis_server_url: str, fake_llm: str) -> AsyncIterator[Stack]:
    running = await start_stack(redis_server_url, fake_llm, gateways=2, workers=0)
    yield running
    await running.stop()


async def login(url: str, api_key: str) -> str:
    """A fresh browser's session cookie."""
    async with httpx.AsyncClient(base_url=url) as browser:
        response = await browser.post("/api/auth/session", json={"api_key": api_key})
        assert response.status_code == 200, response.text
        return str(browser.cookies[COOKIE])


async def me(url: str, cookie: str) -> int:
    async with httpx.AsyncClient(base_url=url, cookies={COOKIE: cookie}) as browser:
        return (await browser.get("/api/auth/me")).status_code


async def seconds_until_refused(url: str, cookie: str, deadline_s: float = 15.0) -> float:
    started = time.monotonic()
    while (status := await me(url, cookie)) != 401:
        assert status == 200
        assert time.monotonic() - started < deadline_s, "the session is still accepted"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_logout_ends_the_session_on_every_gateway(gateways: Stack, redis: Redis) -> None:
    _, key = await ApiKeyStore(redis, Keys(gateways.namespace)).create("dora", "laptop")
    urls = [url for _, url in gateways.gateways]
    cookie = await login(urls[0], key)
    kept = await login(urls[0], key)  # another browser of the same key
    assert [await me(url, cookie) for url in urls] == [200, 200]
    async with httpx.AsyncClient(base_url=urls[0], cookies={COOKIE: cookie}) as browser:
        assert (await browser.delete("/api/auth/session")).status_code == 204
    waits = [await seconds_until_refused(url, cookie) for url in urls]
    print(f"\nlogout: the replayed cookie was refused after {max(waits):.2f} s")
    assert [await me(url, kept) for url in urls] == [200, 200]


async def test_revoking_a_key_ends_its_sessions(gateways: Stack, redis: Redis) -> None:
    store = ApiKeyStore(redis, Keys(gateways.namespace))
    record, key = await store.create("erin", "phone")
    _, other_key = await store.create("erin", "laptop")
    urls = [url for _, url in gateways.gateways]
    cookies = [await login(urls[0], key), await login(urls[1], key)]
    other = await login(urls[0], other_key)
    assert [await me(url, c) for url in urls for c in cookies] == [200] * 4
    revoke = await asyncio.create_subprocess_exec(
        APIKEY_CLI, "revoke", record.key_id, env=gateways.env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await revoke.communicate()
    assert revoke.returncode == 0
    waits = [await seconds_until_refused(url, c) for url in urls for c in cookies]
    print(f"\nrevoke: its sessions were refused after at most {max(waits):.2f} s")
    said = json.loads(out)
    assert said == {"key_id": record.key_id, "revoked": True, "sessions_ended": 2}
    assert [await me(url, other) for url in urls] == [200, 200], "another key's session ended"
    async with httpx.AsyncClient(base_url=urls[0]) as browser:
        again = await browser.post("/api/auth/session", json={"api_key": key})
    assert again.status_code == 401

"""Authentication, isolation between users, limits, CORS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.fake_llm import FakeUpstream
from echotune.gateway.auth.keys import ApiKeyStore
from tests.support.sse import read_stream
from tests.support.stack import API_KEY, Stack, start_stack

ORIGIN = "https://app.echotune.example"


@pytest.fixture(scope="module")
async def secure(redis_server_url: str, fake_llm: str) -> AsyncIterator[Stack]:
    running = await start_stack(
        redis_server_url,
        fake_llm,
        ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_USER="4",
        ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_IP="1000",
        ECHOTUNE_GATEWAY_MAX_OPEN_STREAMS_PER_USER="2",
        ECHOTUNE_GATEWAY_CORS_ORIGINS=f'["{ORIGIN}"]',
    )
    yield running
    await running.stop()


async def new_key(redis: Redis, stack: Stack, user: str) -> str:
    _, plaintext = await ApiKeyStore(redis, Keys(stack.namespace)).create(user, "test")
    return plaintext


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/providers"),
        ("GET", "/api/providers/health"),
        ("POST", "/api/providers/switch"),
        ("GET", "/api/chat/stream?message=hi"),
        ("POST", "/api/chat/some-request-id/cancel"),
        ("GET", "/api/auth/me"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ],
)
async def test_api_routes_need_authentication(secure: Stack, method: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=secure.url) as anonymous:
        response = await anonymous.request(method, path, json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert "error" in body
    assert API_KEY not in response.text


async def test_probes_and_docs_stay_public(secure: Stack) -> None:
    async with httpx.AsyncClient(base_url=secure.url) as anonymous:
        for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
            assert (await anonymous.get(path)).status_code == 200


async def test_wrong_and_revoked_keys_are_refused(secure: Stack, redis: Redis) -> None:
    store = ApiKeyStore(redis, Keys(secure.namespace))
    record, key = await store.create("carol", "to revoke")
    async with httpx.AsyncClient(base_url=secure.url) as http:
        assert (await http.get("/api/auth/me", headers=bearer(key))).json() == {"user_id": "carol"}
        forged = key[:-4] + "AAAA"
        assert (await http.get("/api/auth/me", headers=bearer(forged))).status_code == 401
        await store.revoke(record.key_id)
        refused = await http.get("/api/auth/me", headers=bearer(key))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_openai_sdk_gets_an_authentication_error(secure: Stack) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{secure.url}/v1", api_key="et_x_wrong", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()


async def test_browser_session_cookie(secure: Stack, upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=secure.url) as browser:
        bad = await browser.post("/api/auth/session", json={"api_key": "et_no_pe"})
        assert bad.status_code == 401
        login = await browser.post("/api/auth/session", json={"api_key": API_KEY})
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert (await browser.get("/api/auth/me")).json() == {"user_id": "dev"}
        rid = f"cookie-{uuid.uuid4().hex}"
        await upstream.script(rid, {"tokens": ["via ", "cookie"]})
        result = await read_stream(
            browser, "GET", "/api/chat/stream", params={"message": "hi", "request_id": rid}
        )
        assert result.text == "via cookie"
        await browser.delete("/api/auth/session")
        assert (await browser.get("/api/auth/me")).status_code == 401


async def test_users_cannot_touch_each_others_streams(
    secure: Stack, redis: Redis, upstream: FakeUpstream, rid: str
) -> None:
    alice, bob = await new_key(redis, secure, "alice"), await new_key(redis, secure, "bob")
    await upstream.script(rid, {"tokens": ["mine"], "ttft_ms": 300})
    async with httpx.AsyncClient(base_url=secure.url) as http:
        own = await read_stream(
            http,
            "GET",
            "/api/chat/stream",
            headers=bearer(alice),
            params={"message": "hi", "request_id": rid},
        )
        assert own.text == "mine"
        peek = await http.get(
            "/api/chat/stream",
            headers=bearer(bob),
            params={"request_id": rid, "last_event_id": "0-0"},
        )
        assert peek.status_code == 404
        reuse = await http.get(
            "/api/chat/stream", headers=bearer(bob), params={"request_id": rid, "message": "hi"}
        )
        assert reuse.status_code == 404, "someone else's request id is not told to exist"
        cancel = await http.post(f"/api/chat/{rid}/cancel", headers=bearer(bob))
        assert cancel.status_code == 404
        again = await http.get(
            "/api/chat/stream",
            headers=bearer(alice),
            params={"request_id": rid, "last_event_id": own.events[1].id},
        )
        assert again.status_code == 200


async def test_chat_starts_are_rate_limited_per_user(secure: Stack, redis: Redis) -> None:
    key = await new_key(redis, secure, f"eager-{uuid.uuid4().hex[:6]}")
    statuses = []
    async with httpx.AsyncClient(base_url=secure.url, headers=bearer(key)) as http:
        for n in range(5):
            result = await read_stream(
                http, "GET", "/api/chat/stream", params={"message": f"q{n}", "provider": "demo"}
            )
            statuses.append(result.status)
        refused = await http.get("/api/chat/stream", params={"message": "more"})
    assert statuses == [200, 200, 200, 200, 429]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"


async def test_open_streams_per_user_are_capped(
    secure: Stack, redis: Redis, upstream: FakeUpstream
) -> None:
    key = await new_key(redis, secure, f"hoarder-{uuid.uuid4().hex[:6]}")
    rids = [f"hold-{uuid.uuid4().hex}" for _ in range(2)]
    for rid in rids:
        await upstream.script(rid, {"tokens": ["x"], "ttft_ms": 4000})  # held past the third
    async with httpx.AsyncClient(base_url=secure.url, headers=bearer(key), timeout=10) as http:
        holders = [
            asyncio.create_task(
                read_stream(
                    http, "GET", "/api/chat/stream", params={"message": "hold", "request_id": rid}
                )
            )
            for rid in rids
        ]
        for rid in rids:
            await upstream.requests(rid, until="started")
        third = await http.get("/api/chat/stream", params={"message": "third"})
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "too_many_streams"
        await asyncio.gather(*holders)
        after = await read_stream(
            http, "GET", "/api/chat/stream", params={"message": "now", "provider": "demo"}
        )
        assert after.status == 200


async def test_oversized_body_is_refused(secure: Stack) -> None:
    async with httpx.AsyncClient(base_url=secure.url, headers=bearer(API_KEY)) as http:
        response = await http.post(
            "/api/chat/stream", json={"message": "x" * 300_000}
        )  # over 256 KiB
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


async def test_cors_allowlist(secure: Stack) -> None:
    preflight = {"Access-Control-Request-Method": "GET"}
    async with httpx.AsyncClient(base_url=secure.url) as http:
        allowed = await http.options("/api/providers", headers={"Origin": ORIGIN, **preflight})
        other = await http.options(
            "/api/providers", headers={"Origin": "https://evil.example", **preflight}
        )
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in other.headers

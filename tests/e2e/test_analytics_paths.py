"""Issue 16: the analytics pass-through forwards only the routes it knows, exactly as named.

Paths are sent raw (httpcore, httpx's transport, with an explicit request target) so that no
client normalises them; uvicorn hands the app the path percent-decoded once and not normalised
(``/api/analytics/%2e%2e/x`` arrives as ``/api/analytics/../x``).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpcore
import httpx
import pytest

from deploy.local.processes import start_analytics
from tests.support.stack import API_KEY, Stack, start_stack
from tests.support.telemetry import with_database

PREFIXES = ["/api/analytics/", "/api/insights/", "/api/conversations/"]
# A dot segment, spelled every way a decoder might turn into "..", and separators.
DOTS = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%252e%252e", "%25%32%65%25%32%65", "."]
SEPARATORS = ["/", "%2f", "%2F", "%252f", "\\", "%5c", "%5C"]
TARGETS = ["openapi.json", "docs", "healthz", "readyz"]


def traversals() -> list[str]:
    """Paths under the pass-through prefixes that try to reach the analytics service's root."""
    paths = set()
    for prefix, dots, sep, target in itertools.product(PREFIXES, DOTS, SEPARATORS, TARGETS):
        climb = f"{dots}{sep}" * 3
        paths |= {f"{prefix}{climb}{target}", f"{prefix}providers{sep}{climb}{target}"}
    paths |= {
        "/api/analytics/providers/./timeseries",
        "/api/analytics/./providers",
        "/api/analytics//providers",
        "/api/analytics/providers/",
        "/api/analytics/providers%2ftimeseries",
        "/api/analytics/provider%73",
        "/api/insights/engagement/..",
        "/api/insights/engagement%00",
        "/api/conversations/..",
        "/api/conversations/.",
        "/api/conversations/%2e%2e",
        "/api/conversations/a%2f..%2f..%2fdocs",
        "/api/conversations/a/../../../docs",
        "/api/analytics/healthz",
        "/api/analytics/docs",
        "/api/analytics/openapi.json",
    }
    return sorted(paths)


@pytest.fixture(scope="module")
async def gateway(
    mongo_server_url: str, redis_server_url: str, fake_llm: str
) -> AsyncIterator[Stack]:
    mongo_url = with_database(mongo_server_url, f"paths{uuid.uuid4().hex[:8]}")
    analytics, analytics_url = await start_analytics({"ECHOTUNE_MONGODB_URL": mongo_url})
    stack = await start_stack(
        redis_server_url, fake_llm, workers=0, ECHOTUNE_GATEWAY_ANALYTICS_URL=analytics_url
    )
    yield stack
    await stack.stop()
    await analytics.stop()


async def get_raw(pool: httpcore.AsyncConnectionPool, base: str, target: str) -> httpx.Response:
    """GET ``target`` exactly as written (no client-side normalisation)."""
    url = urlsplit(base)
    assert url.hostname is not None
    assert url.port is not None
    response = await pool.request(
        "GET",
        httpcore.URL(scheme=b"http", host=url.hostname.encode(), port=url.port, target=target),
        headers=[(b"host", url.netloc.encode()), (b"authorization", f"Bearer {API_KEY}".encode())],
    )
    return httpx.Response(response.status, headers=response.headers, content=response.content)


async def test_traversal_variants_are_a_gateway_404(gateway: Stack) -> None:
    paths = traversals()
    escaped: list[tuple[str, int, str]] = []
    async with httpcore.AsyncConnectionPool() as pool:
        for path in paths:
            try:
                response = await get_raw(pool, gateway.url, path)
            except httpcore.ReadError as exc:
                escaped.append((path, 0, repr(exc)))
                continue
            body = response.text
            is_gateway_404 = (
                response.status_code == 404
                and response.headers.get("content-type") == "application/json"
                and json.loads(body).get("error", {}).get("code") == "not_found"
                and "request_id" in json.loads(body)
            )
            if not is_gateway_404:
                escaped.append((path, response.status_code, body[:80]))
    statuses = sorted({status for _, status, _ in escaped})
    answered = sum(status == 200 for _, status, _ in escaped)
    print(
        f"\n{len(paths)} traversal variants; {len(escaped)} not refused by the gateway "
        f"(statuses {statuses}; {answered} answered 200 by the analytics service)"
    )
    assert not escaped, escaped[:20]


async def test_known_routes_still_pass(gateway: Stack) -> None:
    async with httpcore.AsyncConnectionPool() as pool:
        for path in [
            "/api/analytics/providers",
            "/api/analytics/providers/timeseries",
            "/api/analytics/listening-patterns",
            "/api/insights/engagement",
            "/api/conversations",
        ]:
            response = await get_raw(pool, gateway.url, path)
            assert response.status_code == 200, (path, response.text[:200])
            assert "data" in response.json()
        missing = await get_raw(pool, gateway.url, "/api/conversations/conv-1.a:b")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "conversation_not_found", "analytics answered"
        query = await get_raw(pool, gateway.url, "/api/analytics/providers?window=1h&x=%2e%2e")
        assert query.status_code in {200, 422}, query.text[:200]

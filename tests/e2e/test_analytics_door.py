"""Analytics behind the gateway: users see only their own data; the API survives fuzzing."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from deploy.local.processes import PYTHON, ROOT, start_analytics
from echotune.common.keys import Keys
from echotune.gateway.auth.keys import ApiKeyStore
from tests.e2e.test_fuzz import MIN_CASES, cases_generated, run_schemathesis
from tests.support.stack import AUTH, Stack, start_stack
from tests.support.telemetry import with_database


@pytest.fixture(scope="module")
async def analytics_url(mongo_server_url: str) -> AsyncIterator[tuple[str, str]]:
    mongo_url = with_database(mongo_server_url, f"door{uuid.uuid4().hex[:8]}")
    seed = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "echotune.analytics.seed.cli",
        "--users",
        "2",
        "--plays",
        "150",
        "--conversations",
        "2",
        "--days",
        "14",
        "--mongodb-url",
        mongo_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert await seed.wait() == 0
    proc, url = await start_analytics({"ECHOTUNE_MONGODB_URL": mongo_url})
    yield url, mongo_url
    await proc.stop()


@pytest.fixture(scope="module")
async def door(
    analytics_url: tuple[str, str], redis_server_url: str, fake_llm: str
) -> AsyncIterator[Stack]:
    running = await start_stack(
        redis_server_url,
        fake_llm,
        workers=0,
        ECHOTUNE_GATEWAY_ANALYTICS_URL=analytics_url[0],
        ECHOTUNE_GATEWAY_ANALYTICS_TIMEOUT_S="60",  # the test server is slow on a busy machine
        ECHOTUNE_MONGODB_URL=analytics_url[1],
    )
    yield running
    await running.stop()


async def key_for(stack: Stack, user: str) -> dict[str, str]:
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    _, key = await ApiKeyStore(redis, Keys(stack.namespace)).create(user, "test")
    await redis.aclose()
    return {"Authorization": f"Bearer {key}"}


async def test_a_user_reads_only_their_own_data(door: Stack) -> None:
    alice, bob = await key_for(door, "user001"), await key_for(door, "user002")
    async with httpx.AsyncClient(base_url=door.url, timeout=30) as http:
        mine = (await http.get("/api/conversations", headers=alice)).json()["data"]
        spying = (
            await http.get("/api/conversations", headers=alice, params={"user_id": "user002"})
        ).json()["data"]
        theirs = (await http.get("/api/conversations", headers=bob)).json()["data"]
        assert mine, "the seed made conversations for user001"
        assert spying == mine
        assert {c["id"] for c in theirs}.isdisjoint({c["id"] for c in mine})
        other = theirs[0]["id"]
        peek = await http.get(f"/api/conversations/{other}", headers=alice)
        assert peek.status_code == 404
        own = await http.get(f"/api/conversations/{other}", headers=bob)
        assert own.status_code == 200
        alice_kpis = (await http.get("/api/insights/engagement", headers=alice)).json()["data"]
        forged = (
            await http.get("/api/insights/engagement", headers=alice, params={"user_id": "user002"})
        ).json()["data"]
        bob_kpis = (await http.get("/api/insights/engagement", headers=bob)).json()["data"]
        assert forged == alice_kpis
        assert bob_kpis != alice_kpis


async def test_analytics_unreachable_is_a_clear_503(redis_server_url: str, fake_llm: str) -> None:
    stack = await start_stack(
        redis_server_url, fake_llm, workers=0, ECHOTUNE_GATEWAY_ANALYTICS_URL="http://127.0.0.1:9"
    )
    try:
        async with httpx.AsyncClient(base_url=stack.url, headers=await key_for(stack, "u")) as http:
            response = await http.get("/api/analytics/providers")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "analytics_unavailable"
    finally:
        await stack.stop()


@pytest.mark.timeout(1200)  # `make fuzz FUZZ_EXAMPLES=...` may run long
async def test_analytics_survives_fuzzing(analytics_url: tuple[str, str]) -> None:
    code, report = await run_schemathesis(analytics_url[0])
    print(report[-1200:])
    assert code == 0, report[-4000:]
    assert cases_generated(report) >= MIN_CASES


PROXIED = (
    "/api/analytics/providers",
    "/api/analytics/providers/timeseries",
    "/api/analytics/listening-patterns",
    "/api/insights/engagement",
    "/api/conversations",
    "/api/conversations/{conversation_id}",
)


async def gateway_schema(stack: Stack, deadline_s: float = 30.0) -> dict[str, Any]:
    """The gateway's OpenAPI once it has merged the analytics schema (read at its start)."""
    ends = time.monotonic() + deadline_s
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
        while True:
            schema: dict[str, Any] = (await http.get("/openapi.json")).json()
            if "/api/insights/engagement" in schema["paths"] or time.monotonic() > ends:
                return schema
            await asyncio.sleep(0.2)


async def test_gateway_docs_list_every_analytics_parameter(
    door: Stack, analytics_url: tuple[str, str]
) -> None:
    ours = await gateway_schema(door)
    async with httpx.AsyncClient(base_url=analytics_url[0]) as http:
        theirs = (await http.get("/openapi.json")).json()
    for path in PROXIED:
        mine = {p["name"] for p in ours["paths"][path]["get"].get("parameters", [])}
        real = {p["name"] for p in theirs["paths"][path]["get"].get("parameters", [])}
        assert mine == real - {"user_id"}, path
    assert "/api/analytics/{path}" not in ours["paths"]
    async with httpx.AsyncClient(base_url=door.url, headers=AUTH) as http:
        docs = await http.get("/docs")
    assert docs.status_code == 200


@pytest.mark.timeout(1200)  # `make fuzz`: ~2,000 cases through gateway, analytics, SecantusDB
async def test_gateway_analytics_routes_survive_fuzzing_and_match_their_docs(door: Stack) -> None:
    """Schemathesis generates from the gateway's own document, reaching analytics through the
    gateway; every answer must conform to the documented status codes and models."""
    assert "/api/insights/engagement" in (await gateway_schema(door))["paths"]
    code, report = await run_schemathesis(
        door.url,
        "--include-path-regex",
        "^/api/(analytics|insights|conversations)",
        checks="not_a_server_error,json_error_body,status_code_conformance,"
        "content_type_conformance,response_schema_conformance",
    )
    print(report[-1500:])
    assert code == 0, report[-4000:]
    tested = re.search(r"Tested: (\d+)", report)
    assert tested, report[-2000:]
    assert int(tested.group(1)) == len(PROXIED)
    assert cases_generated(report) >= MIN_CASES

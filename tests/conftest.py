"""Shared fixtures: Redis, the fake upstream, and a running echotune stack."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from deploy.local import local_model
from deploy.local.servers import (
    RedisClusterServers,
    local_redis_cluster,
    mongo_url,
    redis_url,
    wanted_cluster,
)
from echotune.common.redis import create_redis, is_cluster
from tests.support.processes import start_fake_llm
from tests.support.replicas import lagging_pair, replica_pair  # noqa: F401 - fixtures
from tests.support.stack import AUTH, Stack, start_stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/e2e (and tests/browser) start real processes: mark them ``e2e``.

    ``local_model`` tests are skipped, saying why, when the local-model group is not installed;
    with ECHOTUNE_LOCAL_MODEL=1 (CI) they run, and fail on what is missing."""
    skip_local = None
    if not local_model.wanted() and (why := local_model.unavailable()):
        skip_local = pytest.mark.skip(reason=why)
    for item in items:
        parts = item.path.parts
        if "e2e" in parts or "browser" in parts:
            item.add_marker(pytest.mark.e2e)
        if skip_local and item.get_closest_marker("local_model"):
            item.add_marker(skip_local)


@pytest.fixture(scope="session")
def redis_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """``REDIS_URL``, else the local cluster when ECHOTUNE_REDIS_CLUSTER=1, else a Redis."""
    if wanted_cluster() and not os.environ.get("REDIS_URL"):
        yield request.getfixturevalue("redis_cluster").url
        return
    with redis_url() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A local Redis Cluster: 3 primaries, a replica each (the session's Redis in cluster mode).

    A test that kills a node brings it back (``restore``) before it ends."""
    with local_redis_cluster() as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _skip_single_node_only(request: pytest.FixtureRequest) -> None:
    """Skip ``single_node`` tests when the session's Redis is a cluster, giving the reason."""
    marker = request.node.get_closest_marker("single_node")
    if marker is not None and is_cluster(request.getfixturevalue("redis_server_url")):
        pytest.skip(f"needs a single Redis: {marker.kwargs.get('reason', '')}")


@pytest.fixture
async def redis(redis_server_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_server_url, max_connections=16)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def mongo_server_url() -> Iterator[str]:
    """A MongoDB server: MONGODB_URL, else mongo:7 if Docker answers, else SecantusDB."""
    with mongo_url() as url:
        yield url


@pytest.fixture(scope="session")
def mongo_is_secantus(mongo_server_url: str) -> bool:
    """True when the server is SecantusDB (its buildInfo says so) rather than MongoDB."""
    from pymongo import MongoClient

    with MongoClient(mongo_server_url, serverSelectionTimeoutMS=10_000) as client:
        return "secantusVersion" in client.admin.command("buildInfo")


@pytest.fixture(autouse=True)
def _skip_mongodb_only(request: pytest.FixtureRequest) -> None:
    """Skip ``mongodb_only`` tests against SecantusDB, giving the marker's reason."""
    marker = request.node.get_closest_marker("mongodb_only")
    if marker is not None and request.getfixturevalue("mongo_is_secantus"):
        why = marker.kwargs.get("reason", "SecantusDB differs from MongoDB here")
        pytest.skip(f"needs a real MongoDB, the test server is SecantusDB: {why}")


@pytest.fixture(scope="session")
async def fake_llm() -> AsyncIterator[str]:
    proc, url = await start_fake_llm()
    yield url
    await proc.stop()


@pytest.fixture(scope="session")
async def stack(redis_server_url: str, fake_llm: str) -> AsyncIterator[Stack]:
    """Two gateways and two workers shared by the end-to-end tests (distinct request ids)."""
    running = await start_stack(redis_server_url, fake_llm, gateways=2, workers=2)
    yield running
    await running.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), headers=AUTH) as http:
        yield http


@pytest.fixture
def rid() -> str:
    """A fresh request id; the fake upstream keys its scripts and records by it."""
    return f"test-{uuid.uuid4().hex}"

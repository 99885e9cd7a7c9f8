"""End-to-end tests: they talk to real processes (marked ``e2e`` by the root conftest)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from openai import AsyncOpenAI

from deploy.local.servers import RedisServer
from echotune.fake_llm import FakeUpstream
from tests.support.stack import API_KEY, Stack


@pytest.fixture
def upstream(client: httpx.AsyncClient, fake_llm: str) -> FakeUpstream:
    return FakeUpstream(client, fake_llm)


@pytest.fixture
async def sdk(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    """The official OpenAI SDK pointed at the shared stack's OpenAI door."""
    async with AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def volatile_redis() -> Iterator[RedisServer]:
    """A Redis without persistence: a restart loses every key, groups included."""
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir)
        server.start()
        try:
            yield server
        finally:
            server.stop()

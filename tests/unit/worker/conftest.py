"""The worker in-process: its resources on a real Redis, FastStream's test broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from faststream.redis import TestRedisBroker

from echotune.common.mongo import create_mongo
from echotune.worker.app import create_app
from echotune.worker.conversations import ConversationStore
from echotune.worker.resources import Worker, open_worker
from echotune.worker.settings import WorkerSettings
from tests.unit.analytics.conftest import with_database

DEMO = {"name": "demo", "kind": "demo", "models": ["demo-1"], "token_pace_ms": 1}


@pytest.fixture
def settings(redis_server_url: str) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_server_url,
        mongodb_url="mongodb://127.0.0.1:1/none",  # no context: the answer goes on without it
        namespace=f"t{uuid.uuid4().hex[:10]}",
        providers=[DEMO],
        default_provider="demo",
        context_timeout_s=0.05,
    )


@pytest.fixture
async def worker(settings: WorkerSettings) -> AsyncIterator[tuple[Worker, TestRedisBroker]]:
    broker = create_app(settings).broker
    async with open_worker(settings, broker) as opened, TestRedisBroker(broker) as test_broker:
        broker.context.set_global("worker", opened)
        yield opened, test_broker


@pytest.fixture
async def store(mongo_server_url: str) -> AsyncIterator[ConversationStore]:
    """Conversations in a database of their own on the test MongoDB."""
    client = create_mongo(with_database(mongo_server_url, f"conv{uuid.uuid4().hex[:8]}"))
    conversations = ConversationStore(client, max_chars=6000, keep_turns=40)
    await conversations.migrate()
    yield conversations
    await client.drop_database(conversations.collection.database.name)
    await client.close()

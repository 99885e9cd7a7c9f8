"""The telemetry handlers in-process, on a real Redis and MongoDB.

FastStream's test broker cannot stand in here: the handlers take raw batches and acknowledge
them themselves, atomically with their dead letters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient

from echotune.common.keys import TELEMETRY_GROUP
from echotune.common.messages import TelemetryEvent
from echotune.common.mongo import PROVIDER_TELEMETRY, create_mongo
from echotune.telemetry.app import create_app
from echotune.telemetry.metrics import Metrics
from echotune.telemetry.resources import open_consumer
from echotune.telemetry.settings import TelemetrySettings
from tests.support.telemetry import with_database


@pytest.fixture
def settings(redis_server_url: str, mongo_server_url: str) -> TelemetrySettings:
    database = f"tel{uuid.uuid4().hex[:8]}"
    return TelemetrySettings(
        redis_url=redis_server_url,
        mongodb_url=with_database(mongo_server_url, database),
        namespace=f"t{uuid.uuid4().hex[:10]}",
    )


@pytest.fixture
async def mongo(settings: TelemetrySettings) -> AsyncIterator[AsyncMongoClient[dict]]:  # type: ignore[type-arg]
    client = create_mongo(settings.mongodb_url)
    yield client
    await client.drop_database(client.get_default_database().name)
    await client.close()


async def test_a_published_attempt_becomes_one_document(
    settings: TelemetrySettings,
    mongo: AsyncMongoClient[dict],  # type: ignore[type-arg]
) -> None:
    keys = settings.keys
    broker = create_app(settings).broker
    metrics = Metrics(keys.telemetry, TELEMETRY_GROUP, keys.telemetry_dead_letters)
    event = TelemetryEvent(
        request_id="r-telemetry-1",
        attempt=1,
        provider="demo",
        model="m",
        latency_ms=12.5,
        success=True,
    )
    collection = mongo.get_default_database()[PROVIDER_TELEMETRY]
    async with open_consumer(settings, metrics) as consumer:
        broker.context.set_global("telemetry", consumer)
        await broker.start()
        try:
            body = event.model_dump(mode="json", by_alias=True)
            await broker.publish(body, stream=keys.telemetry)
            await broker.publish(body, stream=keys.telemetry)  # again: still one document
            await broker.publish({"not": "an event"}, stream=keys.telemetry)
            async with asyncio.timeout(20):
                while not await consumer.redis.xlen(keys.telemetry_dead_letters):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the writer pushes no signal to wait on
                pending = await consumer.redis.xpending(keys.telemetry, TELEMETRY_GROUP)
                while pending["pending"]:
                    await asyncio.sleep(0.05)
                    pending = await consumer.redis.xpending(keys.telemetry, TELEMETRY_GROUP)
        finally:
            await broker.stop()
    documents = await collection.find({"requestId": "r-telemetry-1"}).to_list()
    assert len(documents) == 1
    assert documents[0]["latencyMs"] == 12.5

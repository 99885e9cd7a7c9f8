"""What the telemetry handlers share (a ``BatchConsumer``), opened for the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from echotune.common.keys import TELEMETRY_GROUP
from echotune.common.mongo import create_mongo
from echotune.common.redis import create_redis, ensure_group
from echotune.telemetry.consumer import BatchConsumer
from echotune.telemetry.metrics import Metrics
from echotune.telemetry.settings import TelemetrySettings
from echotune.telemetry.upkeep import forget_old_batches_forever, migrate_until_done
from echotune.telemetry.writer import TelemetryWriter

log = logging.getLogger("echotune.telemetry")


@asynccontextmanager
async def open_consumer(
    settings: TelemetrySettings, metrics: Metrics
) -> AsyncIterator[BatchConsumer]:
    """MongoDB migrated (waiting for it), the consumer group, the batch-id upkeep."""
    keys = settings.keys
    redis = create_redis(settings.redis_url, max_connections=16)
    mongo = create_mongo(settings.mongodb_url, timeout_ms=settings.mongo_timeout_ms)
    db = mongo.get_default_database(default="echotune")
    window = timedelta(hours=settings.dedup_window_h)
    upkeep: asyncio.Task[None] | None = None
    try:
        await migrate_until_done(db, settings)
        await ensure_group(redis, keys.telemetry, TELEMETRY_GROUP)
        metrics.redis = redis
        upkeep = asyncio.create_task(forget_old_batches_forever(db, window))
        log.info(
            "writing %s into MongoDB database %s as consumer %s",
            keys.telemetry,
            db.name,
            settings.consumer,
        )
        yield BatchConsumer(settings, redis, TelemetryWriter(db, window), metrics)
    finally:
        if upkeep is not None:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
        metrics.redis = None
        await mongo.close()
        await redis.aclose()

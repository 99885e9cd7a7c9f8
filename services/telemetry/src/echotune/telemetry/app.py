"""Telemetry application factory: telemetry stream → MongoDB, plus ``/metrics`` and ``/healthz``.

Run with ``faststream run echotune.telemetry.app:create_app --factory --host 0.0.0.0
--port 8091`` (or ``uvicorn echotune.telemetry.app:create_app --factory --port 8091``).

Two FastStream subscribers share the consumer group ``TELEMETRY_GROUP``: one reads new
entries in batches (``XREADGROUP COUNT batch_size BLOCK batch_wait_ms``: a batch is whatever
is waiting, up to ``batch_size``, so batches grow by themselves when writes fall behind); the
other (``min_idle_time``) takes over with ``XAUTOCLAIM`` the entries that stayed pending
longer than ``claim_idle_ms`` in a consumer that crashed, one entry at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated

from faststream import AckPolicy, Context, ContextRepo
from faststream.asgi import AsgiFastStream, make_ping_asgi
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from faststream.redis.message import FAKE_CONSUMER, BatchStreamMessage
from faststream.redis.message import RedisBatchStreamMessage as BatchMessage

from echotune.common.keys import TELEMETRY_GROUP
from echotune.common.logs import configure_logging
from echotune.common.mongo import create_mongo
from echotune.common.redis import create_redis, retry_options
from echotune.telemetry.consumer import BatchConsumer
from echotune.telemetry.metrics import Metrics
from echotune.telemetry.settings import TelemetrySettings
from echotune.telemetry.upkeep import ensure_group, forget_old_batches_forever, migrate_until_done
from echotune.telemetry.writer import TelemetryWriter

log = logging.getLogger("echotune.telemetry")
ConsumerDep = Annotated[BatchConsumer, Context("telemetry")]


async def raw_batch(message: BatchStreamMessage) -> BatchMessage:
    """Hand a batch over undecoded: entries are decoded one by one, so a bad one only
    dead-letters itself instead of failing FastStream's parser for the whole batch."""
    return BatchMessage(
        raw_message=message,
        body=b"[]",
        content_type="application/json",
        consumer=FAKE_CONSUMER,  # acks go through BatchConsumer, atomically with dead letters
        group=TELEMETRY_GROUP,
    )


def create_app(settings: TelemetrySettings | None = None) -> AsgiFastStream:
    """The telemetry writer as an ASGI FastStream app."""
    settings = settings or TelemetrySettings()
    configure_logging("telemetry", settings.log_level, settings.log_format)
    keys = settings.keys
    broker = RedisBroker(
        settings.redis_url,
        **retry_options(),
        logger=logging.getLogger("echotune.telemetry.broker"),
        log_level=logging.DEBUG,  # one line per batch is noise; anomalies are logged anyway
        graceful_timeout=settings.shutdown_grace_s,
    )
    metrics = Metrics(keys.telemetry, TELEMETRY_GROUP, keys.telemetry_dead_letters)
    reclaimer = f"{settings.consumer}:reclaim"

    @broker.subscriber(
        stream=StreamSub(
            keys.telemetry,
            group=TELEMETRY_GROUP,
            consumer=settings.consumer,
            batch=True,
            max_records=settings.batch_size,
            polling_interval=settings.batch_wait_ms,
        ),
        ack_policy=AckPolicy.MANUAL,
        parser=raw_batch,
    )
    async def write_batch(message: RedisBatchStreamMessage, telemetry: ConsumerDep) -> None:
        """Write a batch of new telemetry events into MongoDB, then acknowledge it."""
        raw = message.raw_message
        await telemetry.handle(raw["message_ids"], raw["data"], settings.consumer, False)

    @broker.subscriber(
        stream=StreamSub(
            keys.telemetry,
            group=TELEMETRY_GROUP,
            consumer=reclaimer,
            batch=True,
            min_idle_time=settings.claim_idle_ms,
            polling_interval=settings.claim_poll_ms,
        ),
        ack_policy=AckPolicy.MANUAL,
        parser=raw_batch,
    )
    async def reclaim_batch(message: RedisBatchStreamMessage, telemetry: ConsumerDep) -> None:
        """Write entries left pending by a crashed consumer, then acknowledge them."""
        raw = message.raw_message
        await telemetry.handle(raw["message_ids"], raw["data"], reclaimer, True)

    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        redis = create_redis(settings.redis_url, max_connections=16)
        mongo = create_mongo(settings.mongodb_url, timeout_ms=settings.mongo_timeout_ms)
        db = mongo.get_default_database(default="echotune")
        window = timedelta(hours=settings.dedup_window_h)
        upkeep: asyncio.Task[None] | None = None
        try:
            await migrate_until_done(db, settings)
            await ensure_group(redis, keys.telemetry)
            metrics.redis = redis
            writer = TelemetryWriter(db, window)
            upkeep = asyncio.create_task(forget_old_batches_forever(db, window))
            context.set_global("telemetry", BatchConsumer(settings, redis, writer, metrics))
            log.info(
                "writing %s into MongoDB database %s as consumer %s",
                keys.telemetry,
                db.name,
                settings.consumer,
            )
            yield
        finally:
            if upkeep is not None:
                upkeep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep
            metrics.redis = None
            await mongo.close()
            await redis.aclose()

    return AsgiFastStream(
        broker,
        asgi_routes=[
            ("/metrics", metrics.route()),
            ("/healthz", make_ping_asgi(broker, timeout=2.0)),
        ],
        lifespan=lifespan,
    )

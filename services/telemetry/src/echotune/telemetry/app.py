"""Telemetry application factory: telemetry stream → MongoDB, plus ``/metrics`` and ``/healthz``.

Run with ``faststream run echotune.telemetry.app:create_app --factory --host 0.0.0.0
--port 8091`` (or ``uvicorn echotune.telemetry.app:create_app --factory --port 8091``).

Two FastStream subscribers share the consumer group ``TELEMETRY_GROUP``: one reads new
entries in batches (``XREADGROUP COUNT batch_size BLOCK batch_wait_ms``: a batch is whatever
is waiting, up to ``batch_size``, so batches grow by themselves when writes fall behind); the
other (``min_idle_time``) takes over with ``XAUTOCLAIM`` the entries that stayed pending
longer than ``claim_idle_ms`` in a consumer that crashed, one entry at a time. Handlers are
in ``handlers.py``; what they share is opened in ``resources.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import AckPolicy, ContextRepo
from faststream.redis import RedisBroker

from echotune.common.consuming import ProbePort, StreamSubscription, Subscriber, health_route
from echotune.common.keys import TELEMETRY_GROUP
from echotune.common.logs import configure_logging
from echotune.common.redis import create_broker
from echotune.telemetry import handlers
from echotune.telemetry.consumer import reclaimer_of
from echotune.telemetry.handlers import ConsumerDep
from echotune.telemetry.metrics import Metrics
from echotune.telemetry.resources import open_consumer
from echotune.telemetry.settings import TelemetrySettings
from echotune.telemetry.upkeep import keep_consuming


def subscribe(broker: RedisBroker, settings: TelemetrySettings) -> list[Subscriber]:
    """Register the two batch handlers on the telemetry stream; their subscribers."""
    keys = settings.keys
    new = StreamSubscription(
        keys.telemetry,
        group=TELEMETRY_GROUP,
        consumer=settings.consumer,
        batch=True,
        max_records=settings.batch_size,
        polling_interval=settings.batch_wait_ms,
    )
    idle = StreamSubscription(
        keys.telemetry,
        group=TELEMETRY_GROUP,
        consumer=reclaimer_of(settings.consumer),
        batch=True,
        min_idle_time=settings.claim_idle_ms,
        polling_interval=settings.claim_poll_ms,
    )
    subscribers: list[Subscriber] = []
    for stream, handler in ((new, handlers.write_batch), (idle, handlers.reclaim_batch)):
        subscriber = broker.subscriber(
            stream=stream, ack_policy=AckPolicy.MANUAL, parser=handlers.raw_batch
        )
        subscriber(handler)
        subscribers.append(subscriber)
    return subscribers


def create_app(settings: TelemetrySettings | None = None) -> ProbePort:
    """The telemetry writer as an ASGI FastStream app."""
    settings = settings or TelemetrySettings()
    configure_logging("telemetry", settings.log_level, settings.log_format)
    broker = create_broker(
        settings.redis_url,
        logger=logging.getLogger("echotune.telemetry.broker"),
        log_level=logging.DEBUG,  # one line per batch is noise; anomalies are logged anyway
        graceful_timeout=settings.shutdown_grace_s,
    )
    subscribers = subscribe(broker, settings)
    keys = settings.keys
    metrics = Metrics(keys.telemetry, TELEMETRY_GROUP, keys.telemetry_dead_letters)
    supervisors: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        async with open_consumer(settings, metrics) as consumer:
            context.set_global("telemetry", consumer)
            yield

    async def supervise(telemetry: ConsumerDep) -> None:
        """After start-up: restart a subscriber stopped by a lost group."""
        supervisors.append(
            asyncio.create_task(keep_consuming(telemetry.redis, keys.telemetry, subscribers))
        )

    async def stop_supervising() -> None:
        for task in supervisors:
            task.cancel()

    app = ProbePort(
        broker,
        asgi_routes=[
            ("/metrics", metrics.route()),
            ("/healthz", health_route(broker, subscribers)),
        ],
        lifespan=lifespan,
        after_startup=[supervise],
        on_shutdown=[stop_supervising],
    )
    # FastStream stops the whole application when the group vanishes (NOGROUP: Redis lost
    # its data); this writer recreates the group and restarts the subscribers instead.
    app.context.reset_global("app")
    return app

"""Worker application factory: FastStream consumers of chat jobs and cancel requests.

Run with ``faststream run echotune.worker.app:create_app --factory --port 8081``: the port
serves ``GET /healthz`` (204 while Redis answers and the job subscribers run, else 503) and
``GET /metrics`` (Prometheus, see ``metrics.py``).
Handlers are in ``handlers.py``; what they share (``Worker``) is opened in ``resources.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import AckPolicy, ContextRepo
from faststream.middlewares import ExceptionMiddleware
from faststream.redis import RedisBroker
from pydantic import ValidationError

from echotune.common import heap, tracing
from echotune.common.consuming import ProbePort, StreamSubscription, Subscriber, health_route
from echotune.common.keys import JOBS_GROUP
from echotune.common.logs import configure_logging
from echotune.common.redis import create_broker, is_cluster
from echotune.worker import handlers
from echotune.worker.handlers import WorkerDep
from echotune.worker.metrics import WorkerMetrics
from echotune.worker.resources import open_worker
from echotune.worker.settings import WorkerSettings
from echotune.worker.upkeep import keep_consuming

IDLE_BLOCK_MS = 5000


def subscribe(broker: RedisBroker, settings: WorkerSettings) -> list[Subscriber]:
    """Register the handlers; the two job subscribers (new and reclaimed jobs)."""
    keys = settings.keys
    # One entry per read, and none before a slot is free (see pool.py). The read blocks until
    # a job comes (a new entry ends the block at once): an idle worker wakes rarely.
    jobs = broker.subscriber(
        stream=StreamSubscription(
            keys.jobs,
            group=JOBS_GROUP,
            consumer=settings.consumer,
            max_records=1,
            polling_interval=IDLE_BLOCK_MS,
        ),
        ack_policy=AckPolicy.MANUAL,
    )
    # Jobs left pending by a dead worker (its entries stop being refreshed) come back here;
    # looked for four times per reclaim period.
    reclaimed = broker.subscriber(
        stream=StreamSubscription(
            keys.jobs,
            group=JOBS_GROUP,
            consumer=settings.consumer,
            min_idle_time=int(settings.reclaim_idle_s * 1000),
            polling_interval=max(int(settings.reclaim_idle_s * 250), 100),
        ),
        ack_policy=AckPolicy.MANUAL,
    )
    jobs(handlers.handle_job)
    reclaimed(handlers.reclaim_job)
    if not is_cluster(settings.redis_url):  # on a cluster: cancels.py (resources.py starts it)
        broker.subscriber(channel=keys.cancel_channel)(handlers.handle_cancel)
    return [jobs, reclaimed]


def create_app(settings: WorkerSettings | None = None) -> ProbePort:
    settings = settings or WorkerSettings()
    configure_logging("llm-worker", settings.log_level, settings.log_format)
    tracing.configure_tracing("echotune-llm-worker")
    metrics = WorkerMetrics()
    broker = create_broker(
        settings.redis_url,
        middlewares=[ExceptionMiddleware(handlers={ValidationError: handlers.refuse_unreadable})],
        logger=logging.getLogger("echotune.worker.broker"),
        log_level=logging.DEBUG,  # "Received"/"Processed" know no request; the job's own do
        graceful_timeout=settings.drain_s,
    )
    job_subscribers = subscribe(broker, settings)

    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        async with open_worker(settings, broker, metrics) as worker:
            context.set_global("worker", worker)
            heap.settle()
            yield

    async def supervise(worker: WorkerDep) -> None:
        """After start-up: heartbeat, and restart a subscriber stopped by a lost group."""
        worker.supervise(keep_consuming(worker, job_subscribers))

    async def drain(worker: WorkerDep) -> None:
        """On SIGTERM: take no new job, let running ones finish until the deadline."""
        worker.stop_supervising()
        for subscriber in job_subscribers:
            await subscriber.stop()
        await worker.pool.drain(settings.drain_s)
        await worker.telemetry.flush()

    app = ProbePort(
        broker,
        lifespan=lifespan,
        after_startup=[supervise],
        on_shutdown=[drain],
        asgi_routes=[
            ("/healthz", health_route(broker, job_subscribers)),
            ("/metrics", metrics.route()),
        ],
    )
    # FastStream stops the whole application when the jobs group vanishes (NOGROUP: Redis
    # lost its data); this worker recreates the group and restarts the subscriber instead.
    app.context.reset_global("app")
    return app

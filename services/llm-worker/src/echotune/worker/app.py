"""Worker application factory: FastStream consumers of chat jobs and cancel requests.

Run with ``faststream run echotune.worker.app:create_app --factory --port 8081``: the port
serves ``GET /healthz`` (204 while Redis answers and the job subscribers run, else 503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from faststream import AckPolicy, Context, ContextRepo
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.message import RedisStreamMessage

from echotune.common import job_queue
from echotune.common.breaker import CircuitBreakers
from echotune.common.keys import JOBS_GROUP
from echotune.common.live_stats import LiveStats
from echotune.common.logs import configure_logging
from echotune.common.mongo import create_mongo
from echotune.common.redis import create_redis, retry_options
from echotune.common.request_stream import RequestStreams
from echotune.worker.context import WorkerContext, build_providers
from echotune.worker.conversations import ConversationStore, migrate_when_possible
from echotune.worker.execute import execute
from echotune.worker.inflight import CANCELLED, InFlightJobs
from echotune.worker.pool import JobPool
from echotune.worker.providers.base import make_client
from echotune.worker.settings import WorkerSettings
from echotune.worker.telemetry import TelemetryPublisher
from echotune.worker.upkeep import keep_consuming, keep_held, sweep
from echotune.worker.writer import AppendFlusher

WorkerDep = Annotated[WorkerContext, Context("worker")]
MessageDep = Annotated[RedisStreamMessage, Context("message")]


def create_app(settings: WorkerSettings | None = None) -> AsgiFastStream:
    settings = settings or WorkerSettings()
    configure_logging("llm-worker", settings.log_level)
    keys = settings.keys
    broker = RedisBroker(
        settings.redis_url,
        **retry_options(),
        logger=logging.getLogger("echotune.worker.broker"),
        graceful_timeout=settings.drain_s,
    )

    running: dict[str, WorkerContext] = {}
    supervisors: list[asyncio.Task[None]] = []

    # One entry per read, and none before a slot is free (see pool.py).
    jobs = broker.subscriber(
        stream=StreamSub(keys.jobs, group=JOBS_GROUP, consumer=settings.consumer, max_records=1),
        ack_policy=AckPolicy.MANUAL,
    )
    # Jobs left pending by a dead worker (its entries stop being refreshed) come back here.
    reclaimed = broker.subscriber(
        stream=StreamSub(
            keys.jobs,
            group=JOBS_GROUP,
            consumer=settings.consumer,
            min_idle_time=int(settings.reclaim_idle_s * 1000),
            polling_interval=500,
        ),
        ack_policy=AckPolicy.MANUAL,
    )

    async def admit(
        body: dict[str, Any], worker: WorkerContext, message: RedisStreamMessage
    ) -> None:
        entry_id = _entry_id(message)
        held = worker.jobs.hold(str(body.get("request_id") or entry_id), entry_id)
        await worker.pool.admit(
            lambda: execute(worker, body, held), message, lambda: worker.jobs.release(held)
        )

    @jobs
    async def handle_job(body: dict[str, Any], worker: WorkerDep, message: MessageDep) -> None:
        """Produce one answer; the job is acknowledged once its final event is written."""
        await admit(body, worker, message)

    @reclaimed
    async def reclaim_job(body: dict[str, Any], worker: WorkerDep, message: MessageDep) -> None:
        """Take over a job whose worker died."""
        await admit(body, worker, message)

    @broker.subscriber(channel=keys.cancel_channel)
    async def handle_cancel(request_id: str, worker: WorkerDep) -> None:
        """Cancel the job if this process holds it (every worker hears every cancel)."""
        worker.jobs.stop(request_id, CANCELLED)

    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:
        """204 while Redis answers and both job subscribers read; 503 otherwise."""
        try:
            alive = await broker.ping(timeout=2.0) and jobs.running and reclaimed.running
        except Exception:
            alive = False
        return AsgiResponse(b"", status_code=204 if alive else 503)

    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        redis = create_redis(settings.redis_url, max_connections=settings.concurrency + 16)
        await job_queue.ensure_group(redis, keys)  # before the subscribers: they would use $
        http = make_client()
        context_ms = int(settings.context_timeout_s * 1000)
        mongo = create_mongo(
            settings.mongodb_url, timeout_ms=context_ms, operation_timeout_ms=context_ms
        )
        streams = RequestStreams(
            redis,
            keys,
            request_ttl_s=int(settings.resume_window_s + 60),
            final_ttl_s=int(settings.resume_window_s + 60),
            reader_ttl_ms=int(settings.resume_window_s * 1000),
            events_maxlen=settings.events_maxlen,
        )
        await streams.load_scripts()
        registry = settings.registry()
        worker = WorkerContext(
            settings=settings,
            redis=redis,
            http=http,
            registry=registry,
            providers=build_providers(registry, http),
            jobs=InFlightJobs(),
            streams=streams,
            flusher=AppendFlusher(streams),
            telemetry=TelemetryPublisher(broker, keys.telemetry, settings.telemetry_maxlen),
            breakers=CircuitBreakers(redis, keys, settings.breaker.policy()),
            live=LiveStats(redis, keys),
            pool=JobPool(settings.concurrency),
            conversations=ConversationStore(
                mongo, max_chars=settings.context_max_chars, keep_turns=settings.context_keep_turns
            ),
        )
        context.set_global("worker", worker)
        running["worker"] = worker
        background = [
            asyncio.create_task(worker.flusher.run()),
            asyncio.create_task(sweep(worker, settings.reader_check_s)),
            asyncio.create_task(keep_held(worker)),
            asyncio.create_task(migrate_when_possible(worker.conversations)),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await worker.telemetry.flush()
            await http.aclose()
            await mongo.close()
            await redis.aclose()

    async def supervise() -> None:
        """After start-up: heartbeat, and restart a subscriber stopped by a lost group."""
        supervisors.append(
            asyncio.create_task(keep_consuming(running["worker"], [jobs, reclaimed]))
        )

    async def drain() -> None:
        """On SIGTERM: take no new job, let running ones finish until the deadline."""
        for supervisor in supervisors:
            supervisor.cancel()
        await jobs.stop()
        await reclaimed.stop()
        worker = running["worker"]
        await worker.pool.drain(settings.drain_s)
        await worker.telemetry.flush()

    app = AsgiFastStream(
        broker,
        lifespan=lifespan,
        after_startup=[supervise],
        on_shutdown=[drain],
        asgi_routes=[("/healthz", healthz)],
    )
    # FastStream stops the whole application when the jobs group vanishes (NOGROUP: Redis
    # lost its data); this worker recreates the group and restarts the subscriber instead.
    app.context.reset_global("app")
    return app


def _entry_id(message: RedisStreamMessage) -> str:
    ids = message.raw_message.get("message_ids") or [b""]
    entry = ids[0]
    return entry.decode() if isinstance(entry, bytes) else str(entry)

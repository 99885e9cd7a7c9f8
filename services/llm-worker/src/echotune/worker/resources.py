"""What every job of a worker process shares (``Worker``), opened for the app's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from echotune.common import job_queue, tracing
from echotune.common.breaker import CircuitBreakers
from echotune.common.live_stats import LiveStats
from echotune.common.mongo import create_mongo
from echotune.common.providers import ProviderRegistry
from echotune.common.redis import create_redis, is_cluster
from echotune.common.request_stream import RequestStreams
from echotune.common.stop_reasons import CANCELLED
from echotune.worker.acks import JobAcks
from echotune.worker.cancels import ClusterCancels
from echotune.worker.conversations import ConversationStore, migrate_when_possible
from echotune.worker.hold import Hold
from echotune.worker.inflight import InFlightJobs
from echotune.worker.metrics import WorkerMetrics
from echotune.worker.observability import instrument
from echotune.worker.outcomes import OutcomeRecorder
from echotune.worker.pool import JobPool
from echotune.worker.profile import ProfileStore
from echotune.worker.providers import build_provider
from echotune.worker.providers.base import Provider, make_client
from echotune.worker.settings import WorkerSettings
from echotune.worker.telemetry import TelemetryPublisher
from echotune.worker.upkeep import keep_held, sweep
from echotune.worker.writer import AppendFlusher

UPKEEP_STOP_S = 2.0
"""On shutdown, how long the background tasks may take to stop once cancelled."""


@dataclass(slots=True)
class Worker:
    settings: WorkerSettings
    redis: Redis
    http: httpx.AsyncClient
    registry: ProviderRegistry
    providers: dict[str, Provider]
    jobs: InFlightJobs
    streams: RequestStreams
    flusher: AppendFlusher
    telemetry: TelemetryPublisher
    breakers: CircuitBreakers
    outcomes: OutcomeRecorder
    conversations: ConversationStore
    profiles: ProfileStore
    pool: JobPool
    metrics: WorkerMetrics
    _upkeep: list[asyncio.Task[None]] = field(default_factory=list)
    _supervisor: asyncio.Task[None] | None = None

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background until the worker closes."""
        self._upkeep.append(asyncio.create_task(work))

    def supervise(self, work: Coroutine[Any, Any, None]) -> None:
        """Run the subscribers' supervisor (stopped first on shutdown)."""
        self._supervisor = asyncio.create_task(work)

    def stop_supervising(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()

    async def close(self) -> None:
        """Stop the background work; a round in flight ends first (its data goes last)."""
        self.stop_supervising()
        for task in self._upkeep:
            task.cancel()
        if self._upkeep:  # bounded: a Redis call may swallow its cancellation
            await asyncio.wait(self._upkeep, timeout=UPKEEP_STOP_S)


def build_providers(registry: ProviderRegistry, http: httpx.AsyncClient) -> dict[str, Provider]:
    return {config.name: build_provider(config, http) for config in registry}


@asynccontextmanager
async def open_worker(
    settings: WorkerSettings,
    broker: RedisBroker,
    metrics: WorkerMetrics | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Worker]:
    """Clients, scripts and background upkeep of one worker process (``transport``: the
    providers' HTTP transport, a test's seam)."""
    metrics = metrics or WorkerMetrics()
    keys = settings.keys
    redis = create_redis(settings.redis_url, max_connections=settings.concurrency + 16)
    await job_queue.ensure_group(redis, keys)  # before the subscribers: they would use $
    streams = RequestStreams(
        redis,
        keys,
        request_ttl_s=int(settings.resume_window_s) + settings.key_grace_s,
        final_ttl_s=int(settings.resume_window_s) + settings.key_grace_s,
        reader_ttl_ms=int(settings.resume_window_s * 1000),
        events_maxlen=settings.events_maxlen,
        wait_replicas=settings.redis_wait_replicas,
        wait_ms=settings.redis_wait_ms,
        wait_max_ms=settings.redis_wait_max_ms,
        on_unreplicated_final=metrics.unreplicated_finals.inc,
    )
    await streams.load_scripts()
    breakers = CircuitBreakers(redis, keys, settings.breaker.policy())
    await breakers.load_scripts()
    flusher = AppendFlusher(
        streams, Hold(settings.append_hold_ms / 1000, settings.append_hold_from)
    )
    pace = Hold(settings.read_pace_ms / 1000, settings.read_pace_from)
    outcomes_hold = Hold(settings.outcome_hold_ms / 1000, settings.outcome_hold_from)

    def bookkeeping_hold() -> float:
        return outcomes_hold.seconds(flusher.writers)

    acks = JobAcks(redis, keys, bookkeeping_hold)
    http = make_client(transport, settings.http_transport, lambda: pace.seconds(flusher.writers))
    instrument(redis, http)
    context_ms = int(settings.context_timeout_s * 1000)
    mongo = create_mongo(
        settings.mongodb_url, timeout_ms=context_ms, operation_timeout_ms=context_ms
    )
    registry = settings.registry()
    worker = Worker(
        settings=settings,
        redis=redis,
        http=http,
        registry=registry,
        providers=build_providers(registry, http),
        jobs=InFlightJobs(),
        streams=streams,
        flusher=flusher,
        telemetry=TelemetryPublisher(
            broker,
            redis,
            keys.telemetry,
            settings.telemetry_maxlen,
            wait_replicas=settings.redis_wait_replicas,
            wait_ms=settings.redis_wait_ms,
            wait_max_ms=settings.redis_wait_max_ms,
            on_unreplicated=metrics.unreplicated_telemetry.inc,
        ),
        breakers=breakers,
        outcomes=OutcomeRecorder(breakers, LiveStats(redis, keys), bookkeeping_hold),
        pool=JobPool(settings.concurrency, acks.ack),
        conversations=ConversationStore(
            mongo, max_chars=settings.context_max_chars, keep_turns=settings.context_keep_turns
        ),
        metrics=metrics,
        profiles=ProfileStore(settings, redis, keys),
    )
    metrics.held_jobs(lambda: len(worker.jobs), settings.concurrency)
    metrics.append_hold(worker.flusher.hold_s)
    with tracing.untraced():  # per-token appends, batched records and acks never make spans
        worker.spawn(worker.flusher.run())
        worker.spawn(worker.outcomes.run())
        worker.spawn(acks.run())
    worker.spawn(sweep(worker, settings.reader_check_s))
    worker.spawn(keep_held(worker))
    worker.spawn(migrate_when_possible(worker.conversations))
    if is_cluster(settings.redis_url):
        cancels = ClusterCancels(
            settings.redis_url, keys.cancel_channel, lambda rid: worker.jobs.stop(rid, CANCELLED)
        )
        worker.spawn(cancels.run())
    try:
        yield worker
    finally:
        await worker.close()
        await worker.flusher.aclose()
        await worker.outcomes.flush()
        await acks.flush()
        await worker.telemetry.flush()
        await http.aclose()
        await mongo.close()
        await worker.profiles.close()
        await redis.aclose()
        tracing.shutdown()

"""What every job of a worker process shares, opened in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from echotune.common.breaker import CircuitBreakers
from echotune.common.live_stats import LiveStats
from echotune.common.providers import ProviderRegistry
from echotune.common.request_stream import RequestStreams
from echotune.worker.conversations import ConversationStore
from echotune.worker.inflight import InFlightJobs
from echotune.worker.pool import JobPool
from echotune.worker.providers import build_provider
from echotune.worker.providers.base import Provider
from echotune.worker.settings import WorkerSettings
from echotune.worker.telemetry import TelemetryPublisher
from echotune.worker.writer import AppendFlusher


@dataclass(slots=True)
class WorkerContext:
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
    live: LiveStats
    conversations: ConversationStore
    pool: JobPool


def build_providers(registry: ProviderRegistry, http: httpx.AsyncClient) -> dict[str, Provider]:
    return {config.name: build_provider(config, http) for config in registry}

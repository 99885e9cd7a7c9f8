"""Prometheus metrics of a gateway process, and the ``GET /metrics`` route serving them.

Per response (not per token): the GenAI server histograms (time to first token, time per
output token, request duration) per provider and model, and the outcome. Per relayed event:
the relay lag (Redis entry id time → frame written), in a lock-free histogram (≈0.3 µs).
Read from Redis at each scrape: jobs backlog and pending, workers alive, breaker state.

Refusals (429) are counted by code and scope (``user``, ``ip``, ``service``), never by user
id: a label per user would grow without bound (one series per user, forever) and put user
ids into the monitoring system; who was refused is in the logs, with the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from echotune.common import job_queue
from echotune.common.keys import Keys
from echotune.common.messages import BreakerState, EventType, FinishReason
from echotune.common.metrics import (
    DURATION_BUCKETS,
    FIRST_TOKEN_BUCKETS,
    LAG_BUCKETS,
    OPERATION,
    PER_TOKEN_BUCKETS,
    LoopHistogram,
    entry_seconds,
    gen_ai_provider_name,
)
from echotune.common.providers import ProviderRegistry
from echotune.common.redis import PROBE_TIMEOUT_S
from echotune.gateway.chat.relay import parse_stream_id

if TYPE_CHECKING:
    from echotune.common.breaker import CircuitBreakers
    from echotune.gateway.chat.relay import Entry
    from echotune.web.errors import ApiError

log = logging.getLogger(__name__)

WORKER_SEEN_S = 15.0
SERVER_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "echotune_provider",
                 "gen_ai_request_model")  # fmt: skip
SCOPES = {"too_many_streams": "user", "overloaded": "service"}
"""Scope of a 429 whose error names none in ``details.scope`` (else: ``upstream``, a
provider's 429 relayed by the OpenAI door)."""


class GatewayMetrics:
    """Every metric of one gateway process, in its own registry."""

    def __init__(self, registry: ProviderRegistry | None = None) -> None:
        self.providers = registry
        self.redis: Redis | None = None
        self.keys: Keys | None = None
        self.breakers: CircuitBreakers | None = None
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Request accepted to first answer token written to the client",
            SERVER_LABELS,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Per answer: (last token written - first token written) / (output tokens - 1)",
            SERVER_LABELS,
            buckets=PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Request accepted to final event written (answers started by this process)",
            (*SERVER_LABELS, "error_type"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.started = Counter(
            "echotune_gateway_chats_started",
            "New answers queued by this process",
            ("echotune_provider", "gen_ai_request_model"),
            registry=r,
        )
        self.unreplicated_opens = Counter(
            "echotune_gateway_unreplicated_opens",
            "Answers started before REDIS_WAIT_REPLICAS replicas held their opening (fewer "
            "were online, REDIS_WAIT_MAX_MS passed, or Redis refused the wait)",
            registry=r,
        )
        self.unreplicated_finals = Counter(
            "echotune_gateway_unreplicated_finals",
            "Finals the gateway wrote itself (no worker, cancel grace, deadline, worker lost) "
            "before REDIS_WAIT_REPLICAS replicas held them (fewer were online, "
            "REDIS_WAIT_MAX_MS passed, or Redis refused the wait)",
            registry=r,
        )
        self.unreplicated_reads = Counter(
            "echotune_gateway_unreplicated_reads",
            "Relay reads handed out before REDIS_WAIT_REPLICAS replicas held them (fewer were "
            "online, REDIS_WAIT_MAX_MS passed, or Redis refused the mark or the wait): a "
            "failover could take back an event relayed",
            registry=r,
        )
        self.held_back_reads = Counter(
            "echotune_gateway_held_back_reads",
            "Relay reads that waited past GATEWAY_RELAY_WAIT_MS for an online replica that "
            "lags (delaying what clients get, REDIS_WAIT_MAX_MS at most)",
            registry=r,
        )
        self.streams = Counter(
            "echotune_gateway_streams",
            "Responses ended, by outcome: finish reason, error code, or client_left",
            ("outcome",),
            registry=r,
        )
        self.open_streams = Gauge(
            "echotune_gateway_open_streams", "Responses streaming now", registry=r
        )
        self.relay_lag = LoopHistogram(
            "echotune_gateway_relay_lag_seconds",
            "Event added to its Redis stream (entry id time) to its frame written",
            LAG_BUCKETS,
            registry=r,
        ).labels()
        self.rejections = Counter(
            "echotune_gateway_rejections",
            "Requests refused with 429, by code and scope (user, ip, service)",
            ("code", "scope"),
            registry=r,
        )
        self.jobs_backlog = Gauge(
            "echotune_jobs_backlog", "Jobs queued, not yet taken by any worker", registry=r
        )
        self.jobs_pending = Gauge(
            "echotune_jobs_pending", "Jobs taken by a worker, not yet acknowledged", registry=r
        )
        self.workers_alive = Gauge(
            "echotune_workers_alive", f"Workers seen in the last {WORKER_SEEN_S:g} s", registry=r
        )
        self.breaker_state = Gauge(
            "echotune_breaker_state",
            "1 for the current circuit-breaker state of each provider",
            ("echotune_provider", "state"),
            registry=r,
        )

    def attach(self, redis: Redis, keys: Keys, breakers: CircuitBreakers) -> None:
        """Where the scrape-time gauges are read from (set in the app's lifespan)."""
        self.redis, self.keys, self.breakers = redis, keys, breakers

    def labels(self, provider: str, model: str) -> tuple[str, str, str, str]:
        config = self.providers.get(provider) if self.providers else None
        system = gen_ai_provider_name(config.kind) if config else "unknown"
        return OPERATION, system, provider, model

    def watch(
        self, fresh: bool, opened_at: float, provider: str, model: str, replay_to: str = ""
    ) -> StreamWatch:
        """Start timing one response (``fresh``: it started a new answer; ``replay_to``: the
        newest event when it attached, the last one it replays)."""
        self.open_streams.inc()
        if fresh:
            self.started.labels(provider, model).inc()
        return StreamWatch(self, fresh, opened_at, provider, model, replay_to)

    def rejected(self, error: ApiError) -> None:
        details = error.details if isinstance(error.details, dict) else {}
        scope = details.get("scope") or SCOPES.get(error.code, "upstream")
        self.rejections.labels(error.code, scope).inc()

    async def refresh(self) -> None:
        """Read the Redis-backed gauges (left as they were if Redis does not answer)."""
        if self.redis is None or self.keys is None:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self._refresh(self.redis, self.keys)

    async def _refresh(self, redis: Redis, keys: Keys) -> None:
        depth = await job_queue.depth(redis, keys)
        backlog, pending = depth or (0, 0)
        self.jobs_backlog.set(backlog)
        self.jobs_pending.set(pending)
        self.workers_alive.set(await job_queue.workers_alive(redis, keys, WORKER_SEEN_S))
        if self.breakers is None or self.providers is None:
            return
        names = [config.name for config in self.providers]
        snapshots = await asyncio.gather(*(self.breakers.snapshot(n) for n in names))
        for name, snapshot in zip(names, snapshots, strict=True):
            for state in BreakerState:
                self.breaker_state.labels(name, state.value).set(int(snapshot.state is state))

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


class StreamWatch:
    """Times one response as its frames are written: a few operations per event."""

    __slots__ = ("_final", "_final_at", "_first_at", "_replay_to", "fresh", "metrics", "model",
                 "opened_at", "provider")  # fmt: skip

    def __init__(
        self,
        metrics: GatewayMetrics,
        fresh: bool,
        opened_at: float,
        provider: str,
        model: str,
        replay_to: str = "",
    ) -> None:
        self.metrics, self.fresh, self.opened_at = metrics, fresh, opened_at
        self.provider, self.model = provider, model
        self._replay_to = parse_stream_id(replay_to) if replay_to else None
        self._first_at: float | None = None
        self._final: Entry | None = None
        self._final_at = 0.0

    def sent(self, entry: Entry) -> None:
        """``entry``'s frame was just written to the client."""
        if entry.id and not self._replayed(entry.id):
            self.metrics.relay_lag.observe(max(time.time() - entry_seconds(entry.id), 0.0))
        if entry.type == EventType.DELTA:
            if self._first_at is None:
                self._first_at = time.monotonic()
        elif entry.type in (EventType.DONE, EventType.ERROR):
            self._final, self._final_at = entry, time.monotonic()

    def _replayed(self, entry_id: str) -> bool:
        """Whether the entry was stored before the client attached: its lag is the client's
        absence, not the relay's (checked until the first live entry)."""
        if self._replay_to is None:
            return False
        if parse_stream_id(entry_id) <= self._replay_to:
            return True
        self._replay_to = None
        return False

    def end(self) -> None:
        """The response is over (final event written, client gone, or deadline)."""
        metrics, final = self.metrics, self._final
        metrics.open_streams.dec()
        data = json.loads(final.data) if final is not None else {}
        if final is None:
            outcome = "client_left"
        elif final.type == EventType.DONE:
            outcome = str(data.get("finish_reason"))
        else:
            outcome = str(data.get("code"))
        metrics.streams.labels(outcome).inc()
        if not self.fresh:
            return
        provider, model = self.provider, self.model
        if final is not None and final.type == EventType.DONE:
            provider, model = str(data.get("provider")), str(data.get("model"))
        labels = metrics.labels(provider, model)
        if self._first_at is not None:
            metrics.time_to_first_token.labels(*labels).observe(self._first_at - self.opened_at)
        if final is None:
            return
        done = final.type == EventType.DONE  # a Stop's error_type is "cancelled", as the worker's
        error_type = "" if done and outcome != FinishReason.CANCELLED else outcome
        duration = self._final_at - self.opened_at
        metrics.request_duration.labels(*labels, error_type).observe(duration)
        tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        if self._first_at is not None and tokens > 1 and done:  # a Stop's too, as the worker
            per_token = (self._final_at - self._first_at) / (tokens - 1)
            metrics.time_per_output_token.labels(*labels).observe(per_token)


async def _metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics_route(metrics: Annotated[GatewayMetrics, Depends(_metrics)]) -> Response:
    """Prometheus text exposition of this gateway process."""
    return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""Prometheus metrics of a worker process, and the ``GET /metrics`` ASGI route serving them.

Nothing here runs per token: provider calls are measured when an attempt ends (its clock
kept the chunk gaps), jobs when they end. The GenAI client histograms are labelled by
operation, provider kind (``gen_ai_provider_name``), configured provider and model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faststream.asgi import AsgiResponse, get
from faststream.asgi.handlers import GetHandler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from echotune.common.breaker import Transition
from echotune.common.messages import ChatEvent, DoneEvent, ErrorEvent
from echotune.common.metrics import (
    DURATION_BUCKETS,
    FIRST_TOKEN_BUCKETS,
    OPERATION,
    PER_TOKEN_BUCKETS,
    TOKEN_BUCKETS,
    LoopHistogram,
    gen_ai_provider_name,
)
from echotune.common.providers import ProviderConfig
from echotune.worker.telemetry import AttemptClock

CLIENT_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "echotune_provider",
                 "gen_ai_request_model")  # fmt: skip
PICKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                  30.0, 60.0)  # fmt: skip


class WorkerMetrics:
    """Every metric of one worker process, in its own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "One provider call (attempt), request sent to stream ended",
            (*CLIENT_LABELS, "error_type"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Provider call sent to its first chunk received",
            CLIENT_LABELS,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.time_per_output_chunk = LoopHistogram(
            "gen_ai_client_operation_time_per_output_chunk_seconds",
            "Time between two chunks of a provider's stream, each chunk after the first",
            PER_TOKEN_BUCKETS,
            CLIENT_LABELS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Input and output tokens of each successful provider call",
            (*CLIENT_LABELS, "gen_ai_token_type"),
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.jobs = Counter(
            "echotune_worker_jobs", "Jobs ended, by finish reason or error code", ("outcome",),
            registry=r,
        )  # fmt: skip
        self.pickup_delay = Histogram(
            "echotune_worker_job_pickup_delay_seconds",
            "Job queued (its entry id time) to taken by this worker (first takes only)",
            buckets=PICKUP_BUCKETS,
            registry=r,
        )
        self.reclaimed = Counter(
            "echotune_worker_jobs_reclaimed", "Jobs taken over from a lost worker", registry=r
        )
        self.unreplicated_finals = Counter(
            "echotune_worker_unreplicated_finals",
            "Final events counted written before ECHOTUNE_REDIS_WAIT_REPLICAS replicas held "
            "them: fewer were online, REDIS_WAIT_MAX_MS passed, or Redis refused the wait (a "
            "failover could lose them)",
            registry=r,
        )
        self.unreplicated_telemetry = Counter(
            "echotune_worker_unreplicated_telemetry",
            "Telemetry batches counted published before ECHOTUNE_REDIS_WAIT_REPLICAS replicas "
            "held them: fewer were online, REDIS_WAIT_MAX_MS passed, or Redis refused the wait "
            "(a failover could lose their documents)",
            registry=r,
        )
        self.retries = Counter(
            "echotune_worker_retries",
            "Provider calls retried, by provider and reason",
            ("echotune_provider", "reason"),
            registry=r,
        )
        self.failovers = Counter(
            "echotune_worker_failovers",
            "Answers moved to another provider, by reason",
            ("from_provider", "to_provider", "reason"),
            registry=r,
        )
        self.cancels = Counter(
            "echotune_worker_cancels",
            "Jobs stopped before their end: cancelled, client_gone, deadline, shutdown",
            ("reason",),
            registry=r,
        )
        self.skips = Counter(
            "echotune_worker_provider_skips",
            "Providers not called: breaker_open, probe_in_flight, rate_limited",
            ("echotune_provider", "reason"),
            registry=r,
        )
        self.transitions = Counter(
            "echotune_breaker_transitions",
            "Circuit-breaker state changes decided by this worker",
            ("echotune_provider", "from_state", "to_state"),
            registry=r,
        )
        self.in_flight = Gauge(
            "echotune_worker_jobs_in_flight", "Jobs held by this worker", registry=r
        )
        self.slots = Gauge("echotune_worker_job_slots", "Jobs this worker runs at once", registry=r)
        self.hold = Gauge(
            "echotune_worker_append_hold_seconds",
            "Least time between this worker's append rounds now (0: a token goes as it comes)",
            registry=r,
        )

    def held_jobs(self, count: Callable[[], float], slots: int) -> None:
        """Read the number of held jobs at each scrape."""
        self.in_flight.set_function(count)
        self.slots.set(slots)

    def append_hold(self, seconds: Callable[[], float]) -> None:
        """Read the append rounds' hold at each scrape."""
        self.hold.set_function(seconds)

    def attempt(
        self,
        config: ProviderConfig,
        model: str,
        clock: AttemptClock,
        latency_s: float,
        error_type: str | None,
        usage: tuple[int, int] | None,
    ) -> None:
        """One provider call ended (``usage``: input and output tokens, success only)."""
        labels = (OPERATION, gen_ai_provider_name(config.kind), config.name, model)
        self.duration.labels(*labels, error_type or "").observe(latency_s)
        if clock.first_token is not None:
            first = clock.first_token - clock.started
            self.time_to_first_chunk.labels(*labels).observe(first)
            gaps = self.time_per_output_chunk.labels(*labels)
            for gap_ms in clock.gaps_ms:
                gaps.observe(gap_ms / 1000)
        if usage is not None:
            self.token_usage.labels(*labels, "input").observe(usage[0])
            self.token_usage.labels(*labels, "output").observe(usage[1])

    def job_ended(self, final: ChatEvent, stopped: str | None) -> None:
        if isinstance(final, DoneEvent):
            outcome = final.finish_reason.value
        elif isinstance(final, ErrorEvent):
            outcome = final.code.value
        else:
            outcome = final.type.value
        self.jobs.labels(outcome).inc()
        reason = stopped if outcome == "cancelled" else None
        if isinstance(final, ErrorEvent) and final.code.value in ("deadline_exceeded", "shutdown"):
            reason = "deadline" if final.code.value == "deadline_exceeded" else "shutdown"
        if reason:
            self.cancels.labels(reason).inc()

    def transition(self, change: Transition) -> None:
        self.transitions.labels(change.provider, change.old.value, change.new.value).inc()

    def route(self) -> GetHandler:
        """The ``GET /metrics`` ASGI handler."""

        @get(include_in_schema=False)
        async def metrics(scope: Any) -> AsgiResponse:
            body = generate_latest(self.registry)
            return AsgiResponse(body, 200, {"Content-Type": CONTENT_TYPE_LATEST})

        return metrics

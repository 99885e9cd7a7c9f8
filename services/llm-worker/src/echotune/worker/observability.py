"""Traces of a worker (only when tracing is on) and the metric + span event of each decision.

A job is one CONSUMER span whose parent is the gateway's publication (the job's
``traceparent``); each provider call is a CLIENT span ``chat {model}`` with the GenAI
attributes, and the instrumented httpx call to the provider below it. Retries, failovers,
skipped providers and breaker transitions are counted and added as span events. Nothing
here runs per token.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from redis.asyncio import Redis

from echotune.common import tracing
from echotune.common.breaker import Permit, Transition
from echotune.common.messages import ChatEvent, DoneEvent, ErrorEvent, TelemetryEvent
from echotune.common.metrics import OPERATION, entry_seconds, gen_ai_provider_name
from echotune.common.providers import ProviderConfig
from echotune.worker.metrics import WorkerMetrics
from echotune.worker.providers.base import Finish, ProviderRequest
from echotune.worker.telemetry import AttemptClock


def instrument(redis: Redis, http: httpx.AsyncClient) -> None:
    """Spans for this process's Redis commands and provider calls."""
    if tracing.enabled():
        RedisInstrumentor.instrument_client(redis)
        HTTPXClientInstrumentor.instrument_client(http)


def job_span(
    traceparent: str | None, request_id: str, entry_id: str, stream: str, consumer: str
) -> AbstractContextManager[Span | None]:
    """The span of one held job, continuing the trace of its publication (``traceparent``)."""
    if not tracing.enabled():
        return tracing.NO_SPAN
    attributes = {
        "messaging.system": "redis",
        "messaging.operation.type": "process",
        "messaging.destination.name": stream,
        "messaging.message.id": entry_id,
        "messaging.consumer.group.name": "llm-workers",
        "echotune.request_id": request_id,
        "echotune.worker": consumer,
    }
    return tracing.span(
        f"process {stream}", kind=SpanKind.CONSUMER, attributes=attributes, traceparent=traceparent
    )


def job_taken(metrics: WorkerMetrics, entry_id: str, epoch: int) -> None:
    """Pickup delay of a first take (queued → taken), else one more job taken over."""
    if epoch == 1:
        if entry_id.partition("-")[0].isdigit():  # an in-memory test broker has no entry ids
            metrics.pickup_delay.observe(max(time.time() - entry_seconds(entry_id), 0.0))
    else:
        metrics.reclaimed.inc()
    tracing.event("job.taken", {"echotune.epoch": epoch})


def job_ended(metrics: WorkerMetrics, final: ChatEvent, stopped: str | None) -> None:
    """Count the job's outcome; on its span: the answer's provider, model, finish or error."""
    metrics.job_ended(final, stopped)
    if (span := tracing.current()) is None:
        return
    if stopped:
        span.set_attribute("echotune.stopped", stopped)
    if isinstance(final, DoneEvent):
        span.set_attributes(
            {
                "echotune.provider": final.provider,
                "gen_ai.response.model": final.model,
                "gen_ai.response.finish_reasons": [final.finish_reason.value],
                "echotune.attempts": final.attempts,
            }
        )
    elif isinstance(final, ErrorEvent):
        span.set_attribute("error.type", final.code.value)
        span.set_status(Status(StatusCode.ERROR, final.message))


def attempt_span(
    config: ProviderConfig, request: ProviderRequest, number: int, permit: Permit
) -> AbstractContextManager[Span | None]:
    """The CLIENT span of one provider call (GenAI inference span)."""
    if not tracing.enabled():
        return tracing.NO_SPAN
    system = gen_ai_provider_name(config.kind)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": system,
        "gen_ai.system": system,
        "gen_ai.request.model": request.model,
        "echotune.provider": config.name,
        "echotune.attempt": number,
        "echotune.breaker.state": permit.state.value,
        "echotune.breaker.probe": permit.probe,
    }
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    if config.base_url is not None:
        attributes["server.address"] = config.base_url.host or ""
        if config.base_url.port:
            attributes["server.port"] = config.base_url.port
    return tracing.span(f"{OPERATION} {request.model}", kind=SpanKind.CLIENT, attributes=attributes)


def attempt_ended(
    metrics: WorkerMetrics,
    span: Span | None,
    config: ProviderConfig,
    model: str,
    clock: AttemptClock,
    event: TelemetryEvent,
    finish: Finish | None,
    usage: tuple[int, int] | None,
) -> None:
    """Measure one provider call (``usage``: input and output tokens, success only)."""
    error_type = event.error_code
    metrics.attempt(config, model, clock, event.latency_ms / 1000, error_type, usage)
    if span is None:
        return
    span.set_attribute("echotune.chunks", clock.tokens)
    if clock.first_token is not None:
        span.set_attribute("gen_ai.response.time_to_first_chunk", clock.first_token - clock.started)
    if finish is not None:
        span.set_attribute("gen_ai.response.finish_reasons", [finish.reason.value])
    if usage is not None:
        span.set_attributes(
            {"gen_ai.usage.input_tokens": usage[0], "gen_ai.usage.output_tokens": usage[1]}
        )
    if error_type:
        span.set_attribute("error.type", error_type)
        if error_type not in ("cancelled", "client_gone"):
            span.set_status(Status(StatusCode.ERROR, error_type))


def retried(
    metrics: WorkerMetrics, provider: str, attempt: int, delay_s: float, reason: str
) -> None:
    metrics.retries.labels(provider, reason).inc()
    attributes: dict[str, str | int | float] = {"echotune.provider": provider, "reason": reason}
    tracing.event("retry", {**attributes, "echotune.attempt": attempt, "echotune.delay_s": delay_s})


def failed_over(
    metrics: WorkerMetrics, from_provider: str, to_provider: str, reason: str, continues: bool
) -> None:
    metrics.failovers.labels(from_provider, to_provider, reason).inc()
    attributes: dict[str, str | bool] = {"from_provider": from_provider, "reason": reason}
    tracing.event("failover", {**attributes, "to_provider": to_provider, "continues": continues})


def skipped(metrics: WorkerMetrics, provider: str, reason: str) -> None:
    """The breaker (or a rate-limit cool-down) kept a provider from being called."""
    metrics.skips.labels(provider, reason).inc()
    tracing.event("breaker.skip", {"echotune.provider": provider, "reason": reason})


def waited(provider: str, wait_s: float) -> None:
    """A short rate-limit cool-down is waited out before calling the provider."""
    tracing.event("rate_limit.wait", {"echotune.provider": provider, "echotune.wait_s": wait_s})


def permitted(metrics: WorkerMetrics, permit: Permit) -> None:
    """A grant that moved its breaker out of open is that breaker's transition."""
    if permit.transition is not None:
        breaker_changed(metrics, permit.transition)


def breaker_changed(metrics: WorkerMetrics, change: Transition) -> None:
    metrics.transition(change)
    tracing.event(
        "breaker.transition",
        {"echotune.provider": change.provider, "from": change.old.value, "to": change.new.value},
    )

"""Worker metrics: one provider call, one job's outcome and why it stopped."""

from __future__ import annotations

import pytest

from echotune.common.breaker import Transition
from echotune.common.messages import (
    BreakerState,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    FinishReason,
    Timings,
)
from echotune.common.providers import ProviderConfig
from echotune.worker.metrics import WorkerMetrics
from echotune.worker.telemetry import AttemptClock

CLAUDE = ProviderConfig.model_validate(
    {"name": "claude", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "models": ["c-1"]}
)
LABELS = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "anthropic",
    "echotune_provider": "claude",
    "gen_ai_request_model": "c-1",
}


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_call_records_duration_first_chunk_every_gap_and_usage() -> None:
    metrics = WorkerMetrics()
    clock = AttemptClock(started=10.0, first_token=10.2, last_token=10.5, tokens=4)
    clock.gaps_ms = [100.0, 100.0, 100.0]
    metrics.attempt(CLAUDE, "c-1", clock, 0.6, None, (12, 4))
    assert value(
        metrics, "gen_ai_client_operation_duration_seconds_sum", **LABELS, error_type=""
    ) == pytest.approx(0.6)
    first = value(metrics, "gen_ai_client_operation_time_to_first_chunk_seconds_sum", **LABELS)
    assert first == pytest.approx(0.2)
    gaps = "gen_ai_client_operation_time_per_output_chunk_seconds_count"
    assert value(metrics, gaps, **LABELS) == 3
    usage = "gen_ai_client_token_usage_sum"
    assert value(metrics, usage, **LABELS, gen_ai_token_type="input") == 12
    assert value(metrics, usage, **LABELS, gen_ai_token_type="output") == 4


def test_a_failed_call_has_an_error_type_and_no_usage() -> None:
    metrics = WorkerMetrics()
    metrics.attempt(CLAUDE, "c-1", AttemptClock(started=1.0), 0.01, "http_529", None)
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert value(metrics, duration, **LABELS, error_type="http_529") == 1
    first = "gen_ai_client_operation_time_to_first_chunk_seconds_count"
    assert value(metrics, first, **LABELS) is None
    assert (
        value(metrics, "gen_ai_client_token_usage_count", **LABELS, gen_ai_token_type="output")
        is None
    )


def done(reason: FinishReason) -> DoneEvent:
    return DoneEvent(finish_reason=reason, provider="p", model="m", timings=Timings(total_ms=1))


def error(code: ErrorCode) -> ErrorEvent:
    return ErrorEvent(code=code, message="x")


@pytest.mark.parametrize(
    ("final", "stopped", "outcome", "cancel"),
    [
        (done(FinishReason.STOP), None, "stop", None),
        (done(FinishReason.CANCELLED), "cancelled", "cancelled", "cancelled"),
        (done(FinishReason.CANCELLED), "client_gone", "cancelled", "client_gone"),
        (error(ErrorCode.DEADLINE_EXCEEDED), None, "deadline_exceeded", "deadline"),
        (error(ErrorCode.SHUTDOWN), None, "shutdown", "shutdown"),
        (error(ErrorCode.ALL_PROVIDERS_FAILED), None, "all_providers_failed", None),
    ],
)
def test_a_job_outcome_and_why_it_stopped(
    final: DoneEvent | ErrorEvent, stopped: str | None, outcome: str, cancel: str | None
) -> None:
    metrics = WorkerMetrics()
    metrics.job_ended(final, stopped)
    assert value(metrics, "echotune_worker_jobs_total", outcome=outcome) == 1
    if cancel is None:
        assert metrics.registry.get_sample_value("echotune_worker_cancels_total", {}) is None
    else:
        assert value(metrics, "echotune_worker_cancels_total", reason=cancel) == 1


def test_breaker_transitions_are_counted_by_provider_and_states() -> None:
    metrics = WorkerMetrics()
    metrics.transition(Transition("claude", BreakerState.CLOSED, BreakerState.OPEN))
    assert (
        value(
            metrics,
            "echotune_breaker_transitions_total",
            echotune_provider="claude",
            from_state="closed",
            to_state="open",
        )
        == 1
    )


def test_the_append_hold_is_read_at_each_scrape() -> None:
    metrics, hold = WorkerMetrics(), [0.0]
    metrics.append_hold(lambda: hold[0])
    assert value(metrics, "echotune_worker_append_hold_seconds") == 0.0
    hold[0] = 0.025
    assert value(metrics, "echotune_worker_append_hold_seconds") == 0.025

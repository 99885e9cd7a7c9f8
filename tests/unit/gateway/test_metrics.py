"""Gateway metrics: what one response records, 429 scopes, and ``/metrics`` of a live app."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from fastapi import FastAPI

from echotune.common.providers import ProviderConfig, ProviderKind, ProviderRegistry
from echotune.gateway.chat.relay import Entry
from echotune.gateway.metrics import GatewayMetrics
from echotune.web.errors import ApiError

OPENAI = ProviderConfig(
    name="fake-openai",
    kind=ProviderKind.OPENAI,
    base_url="http://127.0.0.1:9/v1",
    models=["gpt-fake"],
)
LABELS = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "openai",
    "echotune_provider": "fake-openai",
    "gen_ai_request_model": "gpt-fake",
}


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def entry(kind: str, data: dict[str, object], age_ms: int = 0) -> Entry:
    return Entry(f"{int(time.time() * 1000) - age_ms}-0", kind, json.dumps(data))


DONE = {
    "finish_reason": "stop",
    "provider": "fake-openai",
    "model": "gpt-fake",
    "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    "timings": {"total_ms": 1},
}


def test_a_fresh_answer_records_server_timings_once() -> None:
    metrics = GatewayMetrics(ProviderRegistry([OPENAI]))
    watch = metrics.watch(True, time.monotonic() - 0.05, "fake-openai", "gpt-fake")
    assert value(metrics, "echotune_gateway_open_streams") == 1
    watch.sent(entry("delta", {"delta": "a"}, age_ms=40))
    watch.sent(entry("delta", {"delta": "b c d e"}))
    watch.sent(entry("done", DONE))
    watch.end()
    assert value(metrics, "echotune_gateway_open_streams") == 0
    assert value(metrics, "echotune_gateway_streams_total", outcome="stop") == 1
    assert (
        value(
            metrics,
            "echotune_gateway_chats_started_total",
            echotune_provider="fake-openai",
            gen_ai_request_model="gpt-fake",
        )
        == 1
    )
    ttft = value(metrics, "gen_ai_server_time_to_first_token_seconds_sum", **LABELS)
    assert ttft is not None
    assert ttft >= 0.05
    assert value(metrics, "gen_ai_server_time_per_output_token_seconds_count", **LABELS) == 1
    duration = "gen_ai_server_request_duration_seconds_count"
    assert value(metrics, duration, **LABELS, error_type="") == 1
    assert value(metrics, "echotune_gateway_relay_lag_seconds_count") == 3
    lag = value(metrics, "echotune_gateway_relay_lag_seconds_sum")
    assert lag is not None
    assert lag >= 0.04


def test_a_resumed_stream_counts_its_outcome_but_no_server_timing() -> None:
    metrics = GatewayMetrics(ProviderRegistry([OPENAI]))
    watch = metrics.watch(False, time.monotonic(), "", "")
    watch.sent(entry("delta", {"delta": "a"}))
    watch.sent(entry("error", {"code": "partial_answer", "message": "x", "partial": True}))
    watch.end()
    assert value(metrics, "echotune_gateway_streams_total", outcome="partial_answer") == 1
    assert value(metrics, "gen_ai_server_time_to_first_token_seconds_count", **LABELS) is None


def test_a_resumed_stream_leaves_its_replayed_events_out_of_the_relay_lag() -> None:
    """A reconnect's replay counted as relay lag: after a few resumes the histogram had a
    sixth of its events at 0.5 s or more and a sum of 817 s, while the relay took under 2 ms."""
    metrics = GatewayMetrics(ProviderRegistry([OPENAI]))
    replayed = entry("delta", {"delta": "a"}, age_ms=60_000)
    watch = metrics.watch(False, time.monotonic(), "", "", replay_to=replayed.id)
    watch.sent(replayed)
    assert value(metrics, "echotune_gateway_relay_lag_seconds_count") == 0
    watch.sent(entry("delta", {"delta": "b"}))
    watch.end()
    assert value(metrics, "echotune_gateway_relay_lag_seconds_count") == 1
    lag = value(metrics, "echotune_gateway_relay_lag_seconds_sum")
    assert lag is not None
    assert lag < 1


def test_an_error_answer_is_a_request_with_an_error_type_and_a_client_leaving_is_counted() -> None:
    metrics = GatewayMetrics(ProviderRegistry([OPENAI]))
    failed = metrics.watch(True, time.monotonic(), "fake-openai", "gpt-fake")
    failed.sent(entry("error", {"code": "all_providers_failed", "message": "x"}))
    failed.end()
    left = metrics.watch(True, time.monotonic(), "fake-openai", "gpt-fake")
    left.sent(entry("delta", {"delta": "a"}))
    left.end()
    duration = "gen_ai_server_request_duration_seconds_count"
    assert value(metrics, duration, **LABELS, error_type="all_providers_failed") == 1
    assert value(metrics, "echotune_gateway_streams_total", outcome="client_left") == 1
    assert value(metrics, "gen_ai_server_time_to_first_token_seconds_count", **LABELS) == 1
    assert value(metrics, "gen_ai_server_time_per_output_token_seconds_count", **LABELS) is None


def test_a_cancelled_answer_is_a_request_with_error_type_cancelled() -> None:
    """It was counted a success (``error_type=""``) while the worker's call said cancelled."""
    metrics = GatewayMetrics(ProviderRegistry([OPENAI]))
    watch = metrics.watch(True, time.monotonic(), "fake-openai", "gpt-fake")
    watch.sent(entry("delta", {"delta": "a b"}))
    watch.sent(entry("done", {**DONE, "finish_reason": "cancelled"}))
    watch.end()
    duration = "gen_ai_server_request_duration_seconds_count"
    assert value(metrics, duration, **LABELS, error_type="cancelled") == 1
    assert value(metrics, duration, **LABELS, error_type="") is None
    assert value(metrics, "gen_ai_server_time_per_output_token_seconds_count", **LABELS) == 1


@pytest.mark.parametrize(
    ("error", "scope"),
    [
        (ApiError(429, "rate_limited", "x", details={"scope": "ip"}), "ip"),
        (ApiError(429, "rate_limited", "x", details={"scope": "user"}), "user"),
        (ApiError(429, "too_many_streams", "x"), "user"),
        (ApiError(429, "overloaded", "x"), "service"),
        (ApiError(429, "rate_limited", "the provider said so"), "upstream"),
    ],
)
def test_refusals_are_counted_by_scope_never_by_user(error: ApiError, scope: str) -> None:
    metrics = GatewayMetrics()
    metrics.rejected(error)
    assert value(metrics, "echotune_gateway_rejections_total", code=error.code, scope=scope) == 1


async def test_metrics_route_reads_queue_workers_and_breakers_from_redis(gateway: FastAPI) -> None:
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    lines = set(response.text.splitlines())
    assert "echotune_jobs_backlog 0.0" in lines
    assert "echotune_workers_alive 0.0" in lines
    assert 'echotune_breaker_state{echotune_provider="demo",state="closed"} 1.0' in lines
    assert 'echotune_breaker_state{echotune_provider="demo",state="open"} 0.0' in lines
    assert any(line.startswith("process_cpu_seconds_total ") for line in lines)

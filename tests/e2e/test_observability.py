"""Traces and metrics of the running stack, received by real parts: an OTLP/HTTP receiver
decoding with ``opentelemetry-proto``, and Debian's Prometheus scraping every service."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.processes import ROOT, UVICORN_READY, ServiceProcess
from echotune.fake_llm import FakeUpstream
from tests.support.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.prometheus import prometheus
from tests.support.sse import StreamResult, frames, read_stream
from tests.support.stack import Stack, start_stack

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "echotune.json"
STARTS_PER_USER = 6
TOKENS = 24


def url_of(proc: ServiceProcess) -> str:
    match = re.search(UVICORN_READY, proc.output())
    assert match, f"{proc.name} printed no URL"
    return match.group(1)


async def chat(client: httpx.AsyncClient, stack: Stack, rid: str, **body: object) -> StreamResult:
    return await read_stream(
        client,
        "POST",
        f"{stack.url}/api/chat/stream",
        json={"message": "three albums for a rainy day", **body},
        headers={"X-Request-Id": rid},
    )


def new_rid(tag: str) -> str:
    return f"obs-{tag}-{uuid.uuid4().hex[:12]}"


# --- traces -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def traced(redis_server_url: str, fake_llm: str) -> AsyncIterator[tuple[Stack, OtlpReceiver]]:
    with otlp_receiver() as (receiver, endpoint):
        stack = await start_stack(
            redis_server_url,
            fake_llm,
            gateways=1,
            workers=1,
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
            ECHOTUNE_LOG_FORMAT="json",
            ECHOTUNE_WORKER_RETRY_BASE_S="0.05",
        )
        try:
            yield stack, receiver
        finally:
            await stack.stop()


def print_trace(spans: list[ReceivedSpan], rid: str) -> None:
    root = min(spans, key=lambda s: s.start_ns)
    print(f"\ntrace {root.trace_id} of request {rid}:")
    depth: dict[str, int] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        depth[span.span_id] = depth.get(span.parent_id or "", -1) + 1
        offset = (span.start_ns - root.start_ns) / 1e6
        print(
            f"  {'  ' * depth[span.span_id]}{span.name} [{span.service}, {span.kind}] "
            f"+{offset:.1f} ms, {span.duration_ms:.1f} ms"
        )


def one(spans: list[ReceivedSpan], **match: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {[(s.service, s.name, s.kind) for s in spans]}"
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_id == parent.span_id), key=lambda s: s.start_ns)


def complete_trace(receiver: OtlpReceiver, rid: str) -> list[ReceivedSpan] | None:
    """The trace of request ``rid`` once its gateway and worker spans have all arrived."""
    jobs = receiver.matching(
        lambda s: s.kind == "CONSUMER" and s.attributes.get("echotune.request_id") == rid
    )
    if not jobs:
        return None
    spans = receiver.trace(jobs[0].trace_id)
    names = {(s.service, s.kind) for s in spans}
    wanted = {("echotune-gateway", "SERVER"), ("echotune-llm-worker", "CONSUMER")}
    attempts = [s for s in spans if s.name == "chat gpt-fake"]
    return spans if wanted <= names and len(attempts) == 2 else None


async def test_one_chat_is_one_trace_across_gateway_and_worker(
    traced: tuple[Stack, OtlpReceiver], client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    stack, receiver = traced
    rid = new_rid("trace")
    await upstream.script(rid, {"status": 503}, {"token_count": TOKENS})
    result = await chat(client, stack, rid, provider="fake-openai", model="gpt-fake")
    assert result.last.event == "done"
    assert result.of("retry")
    spans = await receiver.wait_for(lambda r: complete_trace(r, rid))
    print_trace(spans, rid)

    root = one(spans, parent_id=None)
    assert (root.service, root.kind, root.name) == (
        "echotune-gateway",
        "SERVER",
        "POST /api/chat/stream",
    )
    assert root.attributes["echotune.request_id"] == rid
    send = one(spans, kind="PRODUCER")
    assert send.service == "echotune-gateway"
    assert send.parent_id == root.span_id
    job = one(spans, kind="CONSUMER")
    assert job.service == "echotune-llm-worker"
    assert job.parent_id == send.span_id  # carried by the job's traceparent
    assert job.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert [name for name, _ in job.events].count("retry") == 1
    retry = next(attrs for name, attrs in job.events if name == "retry")
    assert (retry["reason"], retry["echotune.provider"]) == ("http_503", "fake-openai")

    failed, answered = (s for s in children(spans, job) if s.name == "chat gpt-fake")
    for attempt in (failed, answered):
        assert attempt.kind == "CLIENT"
        assert attempt.attributes["gen_ai.operation.name"] == "chat"
        assert attempt.attributes["gen_ai.provider.name"] == "openai"
        assert attempt.attributes["gen_ai.system"] == "openai"
        assert attempt.attributes["gen_ai.request.model"] == "gpt-fake"
        (upstream_call,) = [s for s in children(spans, attempt) if s.name == "POST"]
        assert upstream_call.kind == "CLIENT"
    assert failed.error
    assert failed.attributes["error.type"] == "http_503"
    assert not answered.error
    assert answered.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert answered.attributes["gen_ai.usage.output_tokens"] == TOKENS
    assert answered.attributes["gen_ai.usage.input_tokens"] > 0
    assert 0 < answered.attributes["gen_ai.response.time_to_first_chunk"] < 5

    # one trace, one root; nothing per token: no span per SSE frame or per append
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert not [s for s in spans if "http send" in s.name or "http receive" in s.name]
    assert len(spans) < 40, [s.name for s in spans]
    # the provider saw the trace too (W3C traceparent on the upstream request)
    seen = await upstream.requests(rid, count=2)
    assert all(r["headers"]["traceparent"].split("-")[1] == root.trace_id for r in seen)


async def test_json_logs_carry_request_and_trace_ids(
    traced: tuple[Stack, OtlpReceiver], client: httpx.AsyncClient
) -> None:
    stack, receiver = traced
    rid = new_rid("logs")
    result = await chat(client, stack, rid)
    assert result.last.event == "done"
    jobs = await receiver.wait_for(
        lambda r: r.matching(lambda s: s.attributes.get("echotune.request_id") == rid)
    )
    trace_id = jobs[0].trace_id
    for proc in [stack.workers[0], stack.gateways[0][0]]:
        lines = [json.loads(line) for line in proc.lines if line.startswith("{")]
        assert len(lines) == len([line for line in proc.lines if line.strip()]), proc.name
        mine = [line for line in lines if line["request_id"] == rid]
        assert mine, f"{proc.name} logged nothing for {rid}"
        assert {line["trace_id"] for line in mine} == {trace_id}, proc.name
        assert {"ts", "level", "service", "logger", "message", "span_id"} <= set(mine[0])


# --- metrics ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def measured(redis_server_url: str, fake_llm: str) -> AsyncIterator[Stack]:
    stack = await start_stack(
        redis_server_url,
        fake_llm,
        gateways=1,
        workers=2,
        ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_USER=str(STARTS_PER_USER),
        ECHOTUNE_WORKER_RETRY_BASE_S="0.05",
        ECHOTUNE_BREAKER_MIN_CALLS="1000",
        ECHOTUNE_BREAKER_CONSECUTIVE_FAILURES="1000",
    )
    yield stack
    await stack.stop()


async def cancelled_chat(client: httpx.AsyncClient, stack: Stack, rid: str) -> str | None:
    """Start a long answer, cancel it after its first delta; its final event."""
    final = None
    body = {"message": "a long answer", "provider": "fake-openai"}
    async with client.stream(
        "POST", f"{stack.url}/api/chat/stream", json=body, headers={"X-Request-Id": rid}
    ) as response:
        async for frame in frames(response):
            if frame.event == "delta" and final is None:
                final = "asked"
                assert (await client.post(f"{stack.url}/api/chat/{rid}/cancel")).status_code == 202
            if frame.event in ("done", "error"):
                return f"{frame.event}:{frame.json.get('finish_reason') or frame.json['code']}"
    return final


async def test_prometheus_scrapes_the_stack_and_counts_what_happened(
    measured: Stack, client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    stack = measured
    gateway = stack.url.removeprefix("http://")
    workers = [url_of(w).removeprefix("http://") for w in stack.workers]
    rids = [new_rid(f"plain{i}") for i in range(3)]
    for rid in rids:
        assert (await chat(client, stack, rid, provider="fake-openai")).last.event == "done"
    retry, failover, cancel = new_rid("retry"), new_rid("failover"), new_rid("cancel")
    await upstream.script(retry, {"status": 503}, {})
    assert (await chat(client, stack, retry, provider="fake-openai")).last.json["attempts"] == 2
    await upstream.script(failover, *[{"status": 503}] * 3, {})
    done = (await chat(client, stack, failover, provider="fake-openai")).last
    assert (done.event, done.json["provider"]) == ("done", "fake-anthropic")
    await upstream.script(cancel, {"token_count": 400, "pace_ms": 30})
    assert await cancelled_chat(client, stack, cancel) == "done:cancelled"
    refused = await client.post(
        f"{stack.url}/api/chat/stream",
        json={"message": "one too many"},
        headers={"X-Request-Id": new_rid("429")},
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limited")

    gateway_text = (await client.get(f"{stack.url}/metrics")).text
    worker_texts = [(await client.get(f"http://{w}/metrics")).text for w in workers]
    gateway_names = {f.name for f in text_string_to_metric_families(gateway_text)}
    worker_names = {f.name for t in worker_texts for f in text_string_to_metric_families(t)}
    assert {"gen_ai_server_time_to_first_token_seconds", "echotune_gateway_relay_lag_seconds",
            "echotune_jobs_backlog", "echotune_breaker_state"} <= gateway_names  # fmt: skip
    assert {"gen_ai_client_operation_duration_seconds", "gen_ai_client_token_usage",
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "gen_ai_client_operation_time_per_output_chunk_seconds"} <= worker_names  # fmt: skip
    print("\n--- gateway /metrics (excerpt)")
    print("\n".join(excerpt(gateway_text)))
    print("--- worker /metrics (excerpt)")
    print("\n".join(excerpt("\n".join(worker_texts))))

    openai = 'echotune_provider="fake-openai"'
    duration = "gen_ai_client_operation_duration_seconds_count"
    expected = {
        'count(up{job=~"gateway|llm-worker"} == 1)': 3,
        "sum(echotune_gateway_chats_started_total)": 6,
        'sum(echotune_gateway_rejections_total{code="rate_limited",scope="user"})': 1,
        'sum(echotune_gateway_streams_total{outcome="stop"})': 5,
        'sum(echotune_gateway_streams_total{outcome="cancelled"})': 1,
        "sum(gen_ai_server_time_to_first_token_seconds_count)": 6,
        f'sum({duration}{{{openai},error_type=""}})': 4,
        f'sum({duration}{{{openai},error_type="http_503"}})': 4,
        f'sum({duration}{{{openai},error_type="cancelled"}})': 1,
        f'sum({duration}{{echotune_provider="fake-anthropic"}})': 1,
        'sum(gen_ai_client_token_usage_count{gen_ai_token_type="output"})': 5,
        f"sum(echotune_worker_retries_total{{{openai}}})": 3,
        'sum(echotune_worker_failovers_total{to_provider="fake-anthropic"})': 1,
        'sum(echotune_worker_cancels_total{reason="cancelled"})': 1,
        'sum(echotune_worker_jobs_total{outcome="stop"})': 5,
        "sum(echotune_worker_job_pickup_delay_seconds_count)": 6,
        f'sum(echotune_breaker_state{{{openai},state="closed"}})': 1,
        "sum(echotune_jobs_backlog)": 0,
        "sum(echotune_workers_alive)": 2,
    }
    targets = {"gateway": [gateway], "llm-worker": workers}
    async with prometheus(targets) as prom:
        for promql, value in expected.items():
            assert await prom.wait_for_value(promql, value) == value, promql
        lag = await prom.value("sum(echotune_gateway_relay_lag_seconds_count)")
        assert lag is not None
        assert lag >= 6 * 2  # at least a delta and a final per answer
        p50 = await prom.value(
            "histogram_quantile(0.5, sum by (le) (echotune_gateway_relay_lag_seconds_bucket))"
        )
        print(f"PromQL: relay lag p50 {p50 * 1000:.2f} ms over {lag:.0f} events")
        for expr in dashboard_queries():  # every query of the Grafana dashboard runs
            await prom.query(expr.replace("$__rate_interval", "1m"))


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def excerpt(text: str) -> list[str]:
    keep = ("gen_ai_", "echotune_")
    lines = [line for line in text.splitlines() if line.startswith(keep)]
    wanted = [line for line in lines if "_bucket{" not in line or 'le="+Inf"' in line]
    return wanted[:60]

"""Tracing helpers: off by default and free; on, the sampler and the traceparent hand-over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from echotune.common import tracing


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_SERVICE_NAME": "gw"}, False),
    ],
)
def test_tracing_is_on_only_when_an_otlp_endpoint_is_set(env: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(env) is wanted


def test_off_nothing_is_installed_and_every_helper_is_a_no_op() -> None:
    assert tracing.configure_tracing("test", {}) is False
    assert not tracing.enabled()
    assert tracing.span("x") is tracing.NO_SPAN
    with tracing.span("x") as span:
        assert span is None
        assert tracing.traceparent() is None
        assert tracing.trace_ids() is None
        assert tracing.current() is None
        tracing.event("retry", {"reason": "x"})


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test only, with a local provider (the global one is never set)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler({}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def test_the_job_continues_the_trace_of_its_publication(spans: InMemorySpanExporter) -> None:
    with tracing.span("POST /api/chat/stream", kind=SpanKind.SERVER):
        with tracing.span("send jobs", kind=SpanKind.PRODUCER):
            carried = tracing.traceparent()
        ids = tracing.trace_ids()
    assert carried is not None
    assert ids is not None
    with tracing.span("process jobs", kind=SpanKind.CONSUMER, traceparent=carried) as job:
        assert job is not None
        tracing.event("retry", {"reason": "http_503"})
    server, send, process = sorted(spans.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert server.parent is None
    assert send.parent is not None
    assert send.parent.span_id == server.context.span_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert process.context.trace_id == server.context.trace_id
    assert format(server.context.trace_id, "032x") == ids[0]
    assert [e.name for e in process.events] == ["retry"]


def test_a_trace_never_starts_with_a_client_span(spans: InMemorySpanExporter) -> None:
    """Redis commands of periodic tasks (no request around them) are not traced."""
    with tracing.span("XREAD", kind=SpanKind.CLIENT) as alone:
        assert alone is not None
        assert not alone.is_recording()
    with tracing.span("GET /", kind=SpanKind.SERVER), tracing.span("GET", kind=SpanKind.CLIENT):
        pass
    assert [s.name for s in spans.get_finished_spans()] == ["GET", "GET /"]


def test_a_ratio_sampler_is_honoured() -> None:
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    assert "TraceIdRatioBased{0" in tracing.sampler(env).get_description()


async def test_tasks_started_untraced_make_no_spans(spans: InMemorySpanExporter) -> None:
    async def suppressed() -> bool:
        return bool(get_value(_SUPPRESS_INSTRUMENTATION_KEY))

    with tracing.untraced():
        task = asyncio.create_task(suppressed())
    assert await task is True
    assert await asyncio.create_task(suppressed()) is False

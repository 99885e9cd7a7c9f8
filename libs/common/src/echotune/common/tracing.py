"""OpenTelemetry tracing, off unless the standard ``OTEL_*`` variables ask for it.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set,
``OTEL_TRACES_EXPORTER`` includes ``otlp`` (its default) and ``OTEL_SDK_DISABLED`` is not
``true``. Spans then go by OTLP/HTTP (protobuf) through a batch processor; every other
``OTEL_EXPORTER_OTLP_*`` and ``OTEL_BSP_*`` variable is read by the SDK itself, and
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the service.

Off, no tracer provider is installed, no instrumentation is applied and every helper here
returns at once (a module global read): a request costs nothing, a token never did.

Sampling: ``OTEL_TRACES_SAMPLER`` ``parentbased_always_on`` (default) or
``[parentbased_]traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG``. A root span of kind CLIENT
(a Redis command or HTTP call of a periodic task, outside any request) is never sampled.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_PROPAGATOR = TraceContextTextMapPropagator()
NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
"""What :func:`span` gives when tracing is off (reusable)."""
_tracer: Tracer | None = None
_shutdown: list[Any] = []


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    return "otlp" in exporters and any(env.get(name) for name in ENDPOINT_VARIABLES)


def enabled() -> bool:
    return _tracer is not None


def configure_tracing(service: str, env: Mapping[str, str] = os.environ) -> bool:
    """Install the SDK's tracer provider for ``service`` if the environment asks; whether on."""
    global _tracer
    if _tracer is not None or not wanted(env):
        return _tracer is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        log.warning("OTLP protocol %s is not supported here; sending http/protobuf", protocol)
    detected = OTELResourceDetector().detect()
    name = detected.attributes.get(SERVICE_NAME) or service
    resource = Resource.create({SERVICE_NAME: name, "service.namespace": "echotune"})
    provider = TracerProvider(resource=resource, sampler=sampler(env))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("echotune")
    _shutdown.append(provider)
    log.info("tracing on: service %s, OTLP/HTTP", name)
    return True


def sampler(env: Mapping[str, str] = os.environ) -> Sampler:
    """The sampler named by ``OTEL_TRACES_SAMPLER``, never sampling root CLIENT spans."""
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    root: Sampler = ALWAYS_ON
    if name in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = 1.0
        root = TraceIdRatioBased(min(max(ratio, 0.0), 1.0))
    elif name not in ("always_on", "parentbased_always_on"):
        log.warning("OTEL_TRACES_SAMPLER=%s is not supported; sampling every request", name)
    return ParentBased(root=NoRootClients(root))


class NoRootClients(Sampler):
    """Drops a trace that would start with a CLIENT span (periodic upkeep, not a request)."""

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoRootClients{{{self._delegate.get_description()}}}"


def shutdown() -> None:
    """Export what is buffered and stop (at the end of the process's lifespan)."""
    global _tracer
    for provider in _shutdown:
        provider.shutdown()
    _shutdown.clear()
    _tracer = None


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes = None,
    traceparent: str | None = None,
) -> AbstractContextManager[Span | None]:
    """A span made current for the block (its parent: ``traceparent`` if given, else the
    current span); ``None`` inside when tracing is off. Exceptions are not recorded as
    errors by themselves (a cancel is not a failure): the caller sets the status."""
    if _tracer is None:
        return NO_SPAN
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    return _tracer.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to hand to another process."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def current() -> Span | None:
    """The current span if it records, else ``None`` (always ``None`` when off)."""
    if _tracer is None:
        return None
    current_span = trace.get_current_span()
    return current_span if current_span.is_recording() else None


def event(name: str, attributes: Attributes = None) -> None:
    """Add an event (a retry, a failover, a breaker decision) to the current span."""
    if (current_span := current()) is not None:
        current_span.add_event(name, attributes)


def trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for logs; ``None`` when there is none."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Instrumentations stay silent in this block and in the tasks created in it (the hot
    loops: per-token appends must never make spans)."""
    if _tracer is None:
        yield
        return
    token = otel_context.attach(
        otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
    )
    try:
        yield
    finally:
        otel_context.detach(token)

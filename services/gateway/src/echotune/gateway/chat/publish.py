"""Publication of a chat job on the jobs stream, carrying the trace on to the worker."""

from __future__ import annotations

from faststream.redis import RedisBroker
from opentelemetry.trace import SpanKind

from echotune.common import tracing
from echotune.common.messages import ChatJob


async def publish_job(broker: RedisBroker, job: ChatJob, stream: str) -> None:
    """``XADD`` the job; traced, as a ``send`` span whose ``traceparent`` the job carries."""
    if not tracing.enabled():
        await broker.publish(job, stream=stream)
        return
    if (request_span := tracing.current()) is not None:
        request_span.set_attributes(
            {
                "echotune.request_id": job.request_id,
                "echotune.provider": job.provider,
                "gen_ai.request.model": job.model,
            }
        )
    attributes = {
        "messaging.system": "redis",
        "messaging.operation.type": "send",
        "messaging.destination.name": stream,
        "echotune.request_id": job.request_id,
    }
    with tracing.span(f"send {stream}", kind=SpanKind.PRODUCER, attributes=attributes):
        traced = job.model_copy(update={"traceparent": tracing.traceparent()})
        await broker.publish(traced, stream=stream)

"""Publication of a chat job on the jobs stream, carrying the trace on to the worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from faststream.redis import RedisBroker
from opentelemetry.trace import SpanKind

from echotune.common import tracing
from echotune.common.messages import ChatJob
from echotune.common.stream_entry import entry_fields


@contextmanager
def sending(job: ChatJob, stream: str) -> Iterator[ChatJob]:
    """The job to send: traced, inside a ``send`` span whose ``traceparent`` it carries."""
    if not tracing.enabled():
        yield job
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
        yield job.model_copy(update={"traceparent": tracing.traceparent()})


async def publish_job(broker: RedisBroker, job: ChatJob, stream: str) -> None:
    """``XADD`` the job (FastStream's publish)."""
    await broker.publish(job, stream=stream)


async def job_fields(broker: RedisBroker, job: ChatJob) -> list[str | bytes]:
    """The fields of the jobs-stream entry FastStream's publish would ``XADD`` for ``job``
    (flat: name, value…), for a script that writes it along with other work."""
    fields = await entry_fields(broker, job)
    return [part for item in fields.items() for part in item]

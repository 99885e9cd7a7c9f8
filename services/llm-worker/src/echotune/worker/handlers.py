"""The worker's FastStream handlers: chat jobs (new and reclaimed), cancels, unreadable jobs."""

from __future__ import annotations

import json
import logging
from typing import Annotated

from faststream.redis.message import RedisStreamMessage
from pydantic import ValidationError

from echotune.common.consuming import InlineContext
from echotune.common.messages import ChatJob, ErrorCode, ErrorEvent
from echotune.common.request_stream import Take
from echotune.common.stop_reasons import CANCELLED
from echotune.worker.execute import execute
from echotune.worker.resources import Worker

log = logging.getLogger(__name__)

WorkerDep = Annotated[Worker, InlineContext("worker")]
MessageDep = Annotated[RedisStreamMessage, InlineContext("message")]


async def handle_job(job: ChatJob, worker: WorkerDep, message: MessageDep) -> None:
    """Produce one answer; the job is acknowledged once its final event is written."""
    await _admit(job, worker, message, first=True)


async def reclaim_job(job: ChatJob, worker: WorkerDep, message: MessageDep) -> None:
    """Take over a job whose worker died (its entry stopped being refreshed)."""
    await _admit(job, worker, message, first=False)


async def _admit(job: ChatJob, worker: Worker, message: RedisStreamMessage, *, first: bool) -> None:
    """Hold the entry at once (kept fresh, cancellable), then wait for a slot.

    An entry this process holds already is not run a second time: reclaimed, it looked idle
    only because Redis was away longer than the reclaim period (a cluster failover); read
    again, the jobs stream lost its delivery."""
    entry = entry_id(message)
    if worker.jobs.holds(entry):
        log.warning("job entry %s is held here already (Redis was away or lost it)", entry)
        return
    held = worker.jobs.hold(job.request_id, entry)
    await worker.pool.admit(
        lambda: execute(worker, job, held, first=first), held, lambda: worker.jobs.release(held)
    )


async def handle_cancel(request_id: str, worker: WorkerDep) -> None:
    """Stop the job if this process holds it (every worker hears every cancel)."""
    worker.jobs.stop(request_id, CANCELLED)


async def refuse_unreadable(exc: ValidationError, worker: WorkerDep, message: MessageDep) -> None:
    """A job that does not match ``ChatJob``: its stream (if any) ends with ``invalid_job``."""
    log.error("invalid chat job: %s", exc.errors(include_url=False)[:3])
    request_id = _request_id(message)
    if request_id is not None:
        taken = await worker.streams.take(
            request_id, worker.settings.consumer, entry=entry_id(message)
        )
        if taken.state is Take.TAKEN:
            error = ErrorEvent(code=ErrorCode.INVALID_JOB, message="the chat job could not be read")
            await worker.streams.append_final(request_id, taken.fence, 1, error)
    await message.ack()


def _request_id(message: RedisStreamMessage) -> str | None:
    try:
        body = json.loads(message.body)
    except ValueError:
        return None
    value = body.get("request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def entry_id(message: RedisStreamMessage) -> str:
    ids = message.raw_message.get("message_ids") or [b""]
    entry = ids[0]
    return entry.decode() if isinstance(entry, bytes) else str(entry)

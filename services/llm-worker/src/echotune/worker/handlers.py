"""Turns a raw job message into a run, refusing what it cannot read."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from echotune.common.logs import request_id_var
from echotune.common.messages import ChatJob, ErrorCode, ErrorEvent, encode_event
from echotune.common.streams import append_final
from echotune.worker.context import WorkerContext
from echotune.worker.jobs import JobRunner

log = logging.getLogger(__name__)


async def run_job(
    worker: WorkerContext, body: dict[str, Any], entry_id: str | None, *, reclaimed: bool
) -> None:
    request_id = str(body.get("request_id", "-"))
    token = request_id_var.set(request_id)
    try:
        try:
            job = ChatJob.model_validate(body)
        except ValidationError as exc:
            await _refuse(worker, request_id, exc)
            return
        runner = JobRunner(worker, job, entry_id)
        if await runner.writer.has_ended():
            log.info("job already ended; acknowledging it")
            return
        log.info(
            "job %s provider=%s model=%s",
            "reclaimed" if reclaimed else "started",
            job.provider,
            job.model,
        )
        if reclaimed:
            await runner.restart_after_worker_loss()
        await runner.run()
        log.info("job finished")
    finally:
        request_id_var.reset(token)


async def _refuse(worker: WorkerContext, request_id: str, exc: ValidationError) -> None:
    """Dead-end an unreadable job: its stream (if any) ends with an ``invalid_job`` error."""
    log.error("invalid chat job: %s", exc.errors(include_url=False)[:3])
    if request_id == "-":
        return
    error = ErrorEvent(code=ErrorCode.INVALID_JOB, message="the chat job could not be read")
    ttl = int(worker.settings.resume_window_s + 60)
    await append_final(worker.redis, worker.settings.keys, request_id, encode_event(error), ttl)

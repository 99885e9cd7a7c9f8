"""Periodic work of a worker process: its held jobs, its liveness, its subscribers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from echotune.common import job_queue
from echotune.common.consuming import Subscriber, restart_stopped
from echotune.common.stop_reasons import CANCELLED, CLIENT_GONE, FENCED

if TYPE_CHECKING:
    from echotune.worker.resources import Worker

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
FORGET_S = 60.0
CHECK_S = 1.0


async def sweep(ctx: Worker, every_s: float) -> None:
    """Stop jobs whose cancel was asked (even if its announcement was lost) or whose reader
    marker lapsed (nobody came back within the resume window)."""
    while True:
        await asyncio.sleep(every_s)
        request_ids = ctx.jobs.request_ids()
        if not request_ids:
            continue
        try:
            async with ctx.redis.pipeline(transaction=False) as pipe:
                for request_id in request_ids:
                    ctx.streams.queue_probe(pipe, request_id)
                replies = await pipe.execute()
        except Exception:
            log.exception("could not probe the held jobs")
            continue
        for n, request_id in enumerate(request_ids):
            reader, cancelled = replies[2 * n], replies[2 * n + 1]
            if cancelled:
                ctx.jobs.stop(request_id, CANCELLED)
            elif not reader:
                ctx.jobs.stop(request_id, CLIENT_GONE)


async def keep_held(ctx: Worker) -> None:
    """Keep every held entry fresh, so no other worker reclaims it (see :func:`refresh`)."""
    while True:
        await asyncio.sleep(ctx.settings.reclaim_idle_s / 3)
        try:
            await refresh(ctx)
        except Exception:
            log.exception("could not refresh the held jobs")


async def refresh(ctx: Worker) -> None:
    """Refresh the held entries; stop the runs whose entry another worker holds now, unless
    the run took the job and still holds its fence: that worker's delivery is one the jobs
    stream lost and gave again, and it will find the job a duplicate."""
    settings = ctx.settings
    held = ctx.jobs.by_entry()
    elsewhere = await job_queue.refresh_held(
        ctx.redis, settings.keys, settings.consumer, list(held)
    )
    moved = [held[entry_id] for entry_id in elsewhere if entry_id in held]
    taken = [job for job in moved if job.fence is not None]
    fences = await ctx.streams.fences([job.request_id for job in taken]) if taken else []
    for job in moved:
        if job.fence is None:
            job.stop(FENCED)
    for job, fence in zip(taken, fences, strict=True):
        if fence != job.fence:
            job.stop(FENCED)


async def keep_consuming(ctx: Worker, subscribers: Sequence[Subscriber]) -> None:
    """Say this worker is alive; if Redis lost the jobs group, create it and read again."""
    settings = ctx.settings
    beat_at = 0.0
    while True:
        try:
            if time.monotonic() >= beat_at:
                await job_queue.heartbeat(ctx.redis, settings.keys, settings.consumer, FORGET_S)
                beat_at = time.monotonic() + HEARTBEAT_S
            recreate = partial(job_queue.ensure_group, ctx.redis, settings.keys)
            if await restart_stopped(subscribers, recreate):
                log.warning("restarted the subscribers of %s", settings.keys.jobs)
        except Exception:
            log.exception("could not check the subscribers")
        await asyncio.sleep(CHECK_S)

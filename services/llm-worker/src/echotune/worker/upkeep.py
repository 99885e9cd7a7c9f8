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
from echotune.worker.inflight import CANCELLED, CLIENT_GONE, FENCED

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
    """Refresh the held entries; stop the jobs not yet taken whose entry another worker holds
    now. A taken one goes on: the entry may be held by a worker that will find the job a
    duplicate (its delivery was lost and given again), and a real takeover fences it off at
    its next write."""
    settings = ctx.settings
    held = ctx.jobs.by_entry()
    taken = await job_queue.refresh_held(ctx.redis, settings.keys, settings.consumer, list(held))
    for entry_id in taken:
        if (job := held.get(entry_id)) is not None and not job.taken:
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

"""Keeps this worker's in-flight job entries fresh, so no other worker reclaims them.

A job stays pending in the consumer group until its final event is written. Another
worker reclaims entries idle for longer than ``reclaim_idle_s``; a live worker therefore
re-claims its own entries (``XCLAIM … JUSTID``, which resets their idle time) every third
of that period. A dead worker stops doing so, and its jobs are taken over.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from echotune.common.keys import JOBS_GROUP
from echotune.worker.context import WorkerContext

log = logging.getLogger(__name__)


async def keep_jobs_owned(worker: WorkerContext) -> None:
    settings = worker.settings
    while True:
        await asyncio.sleep(settings.reclaim_idle_s / 3)
        entry_ids = worker.cancels.entry_ids()
        if not entry_ids:
            continue
        try:
            await worker.redis.xclaim(
                settings.keys.jobs,
                JOBS_GROUP,
                settings.consumer,
                0,
                list[Any](entry_ids),
                justid=True,
            )
        except Exception:
            log.exception("could not refresh the ownership of in-flight jobs")

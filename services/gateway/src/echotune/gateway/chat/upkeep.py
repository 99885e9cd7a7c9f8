"""Periodic work of a gateway process: keep its streams alive, trim the jobs stream."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from echotune.common import job_queue
from echotune.common.keys import Keys
from echotune.gateway.chat.service import ChatService

log = logging.getLogger(__name__)


async def keep_streams_alive(chat: ChatService, every_s: float) -> None:
    """Refresh reader markers and open-stream entries, so workers keep producing."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await chat.refresh_open_streams()
        except Exception:
            log.exception("could not refresh this gateway's open streams")


async def trim_jobs(redis: Redis, keys: Keys, every_s: float) -> None:
    """Drop acknowledged jobs from the jobs stream (never a pending or undelivered one)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            dropped = await job_queue.trim(redis, keys)
            if dropped:
                log.debug("trimmed %d acknowledged jobs", dropped)
        except Exception:
            log.exception("could not trim the jobs stream")

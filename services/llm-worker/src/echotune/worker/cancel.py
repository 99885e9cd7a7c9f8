"""Cancellation of in-flight jobs: on request (Pub/Sub) or when no reader is left."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from echotune.common.keys import Keys

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
CLIENT_GONE = "client_gone"


@dataclass(slots=True)
class InFlight:
    """A job running in this process, and why it was cancelled, if it was."""

    task: asyncio.Task[Any]
    entry_id: str | None = None
    reason: str | None = None


class CancelRegistry:
    """The jobs this process runs, by request id."""

    def __init__(self) -> None:
        self._jobs: dict[str, InFlight] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, request_id: str, task: asyncio.Task[Any], entry_id: str | None) -> InFlight:
        entry = self._jobs[request_id] = InFlight(task, entry_id)
        return entry

    def remove(self, request_id: str) -> None:
        self._jobs.pop(request_id, None)

    def cancel(self, request_id: str, reason: str) -> bool:
        entry = self._jobs.get(request_id)
        if entry is None or entry.task.done():
            return False
        entry.reason = entry.reason or reason
        entry.task.cancel()
        log.info("cancelling request %s: %s", request_id, reason)
        return True

    def reason(self, request_id: str) -> str | None:
        entry = self._jobs.get(request_id)
        return entry.reason if entry else None

    def cancel_all(self, reason: str) -> None:
        for request_id in list(self._jobs):
            self.cancel(request_id, reason)

    def request_ids(self) -> list[str]:
        return list(self._jobs)

    def entry_ids(self) -> list[str]:
        """Job stream entries of the jobs running here."""
        return [job.entry_id for job in self._jobs.values() if job.entry_id]


async def sweep_abandoned(
    registry: CancelRegistry, redis: Redis, keys: Keys, every_s: float
) -> None:
    """Cancel jobs whose reader marker expired: nobody came back within the resume window."""
    while True:
        await asyncio.sleep(every_s)
        request_ids = registry.request_ids()
        if not request_ids:
            continue
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for request_id in request_ids:
                    pipe.exists(keys.reader(request_id))
                present = await pipe.execute()
        except Exception:
            log.exception("could not check reader markers")
            continue
        for request_id, alive in zip(request_ids, present, strict=True):
            if not alive:
                registry.cancel(request_id, CLIENT_GONE)

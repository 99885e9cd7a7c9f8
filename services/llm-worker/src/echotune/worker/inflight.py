"""The jobs this process holds: from the moment their entry is read until they end.

A job is registered before anything else happens to it (even before a slot is free), so
that its entry is kept fresh in the consumer group (no other worker reclaims it) and a
cancel that arrives at any moment finds it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class InFlight:
    """A held job, the task producing its answer once started, and why it was stopped."""

    request_id: str
    entry_id: str
    task: asyncio.Task[Any] | None = None
    reason: str | None = None
    fence: str | None = None
    """This worker's take of the job (``Taken.fence``), once it took it."""
    ended: bool = False
    """The answer ended (this worker's shutdown wrote its end, or it was ended elsewhere), so
    the entry may be acknowledged although its run was cancelled (not when fenced off: the
    entry is then the new owner's)."""

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            log.info("stopping request %s: %s", self.request_id, reason)
        if self.task is not None and not self.task.done():
            self.task.cancel()


class InFlightJobs:
    """The jobs of this process, by entry (one job may have two entries: a retried publish)."""

    def __init__(self) -> None:
        self._jobs: dict[str, InFlight] = {}
        self._by_request: dict[str, list[InFlight]] = {}  # read for every token: no scan

    def __len__(self) -> int:
        return len(self._jobs)

    def hold(self, request_id: str, entry_id: str) -> InFlight:
        if (old := self._jobs.get(entry_id)) is not None:
            self.release(old)
        job = self._jobs[entry_id] = InFlight(request_id, entry_id)
        self._by_request.setdefault(request_id, []).append(job)
        return job

    def holds(self, entry_id: str) -> bool:
        return entry_id in self._jobs

    def release(self, job: InFlight) -> None:
        if self._jobs.get(job.entry_id) is job:
            del self._jobs[job.entry_id]
            same = self._by_request[job.request_id]
            same.remove(job)
            if not same:
                del self._by_request[job.request_id]

    def _of(self, request_id: str) -> list[InFlight]:
        return self._by_request.get(request_id, [])

    def stop(self, request_id: str, reason: str) -> None:
        for job in self._of(request_id):
            job.stop(reason)

    def reason(self, request_id: str) -> str | None:
        return next((job.reason for job in self._of(request_id) if job.reason), None)

    def request_ids(self) -> list[str]:
        return list({job.request_id: None for job in self._jobs.values()})

    def by_entry(self) -> dict[str, InFlight]:
        return dict(self._jobs)

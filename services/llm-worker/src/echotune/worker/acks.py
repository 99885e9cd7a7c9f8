"""Acknowledging jobs' entries once their answers ended: at once when idle, together when busy.

Busy (``hold.py``), the entries of the answers that ended meanwhile are acknowledged in one
``XACK``, at most the hold apart, instead of one round trip per answer. An entry waiting here
is still pending, as it was while its answer ran: reclaimed (after ``RECLAIM_IDLE_S``), its
job is found ended. One left unacknowledged (Redis away, a shutdown cut short) is the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis

from echotune.common import job_queue
from echotune.common.keys import Keys
from echotune.worker.hold import held_rounds

log = logging.getLogger(__name__)


class JobAcks:
    def __init__(self, redis: Redis, keys: Keys, hold: Callable[[], float]) -> None:
        """``hold``: the least time between two acknowledgements now (0: idle)."""
        self._redis, self._keys, self._hold = redis, keys, hold
        self._entries: list[str] = []
        self._wake = asyncio.Event()

    async def ack(self, entry_id: str) -> None:
        """Acknowledge ``entry_id`` now, or, busy, with the next ones (errors are logged)."""
        self._entries.append(entry_id)
        if self._hold():
            self._wake.set()
        else:
            await self.flush()

    async def run(self) -> None:
        """Acknowledge what waits, at most the hold apart."""
        await held_rounds(self._wake, self._hold, self.flush)

    async def flush(self) -> None:
        """Acknowledge every entry waiting now."""
        entries, self._entries = self._entries, []
        if not entries:
            return
        try:
            await job_queue.ack(self._redis, self._keys, entries)
        except asyncio.CancelledError:  # shutting down: the last flush sends them (again:
            self._entries[:0] = entries  # acknowledging twice changes nothing)
            raise
        except Exception:  # left pending: whoever reclaims them finds their answers ended
            log.exception("could not acknowledge %d jobs", len(entries))

"""An idle deadline over many awaits: moving it costs an assignment, not a new timer.

``asyncio.timeout`` per token builds a context and reschedules a timer each time; here one
timer handle lives as long as the deadline keeps moving and fires at most once per period.
"""

from __future__ import annotations

import asyncio
import math


class Deadline:
    """Cancels the current task once the loop's clock passes ``at``; see :meth:`expired`."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a deadline belongs to a task"
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self.at = math.inf

    def move(self, at: float) -> None:
        self.at = at
        if self._handle is None and not self._fired:
            self._handle = self._loop.call_at(at, self._check)

    def _check(self) -> None:
        self._handle = None
        if self._loop.time() < self.at:
            self._handle = self._loop.call_at(self.at, self._check)
            return
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """After a ``CancelledError``: whether it was this deadline's own (then absorbed)."""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

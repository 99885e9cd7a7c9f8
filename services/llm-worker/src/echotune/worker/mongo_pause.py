"""Leave MongoDB alone for a while after a failure, so an outage does not slow every answer."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

PAUSE_AFTER_FAILURE_S = 10.0


class MongoPause:
    """One reader's memory of its last MongoDB failure (context, profile)."""

    def __init__(self, pause_s: float = PAUSE_AFTER_FAILURE_S) -> None:
        self.pause_s = pause_s
        self._until = 0.0

    @property
    def active(self) -> bool:
        return time.monotonic() < self._until

    def failed(self, exc: BaseException, what: str) -> None:
        self._until = time.monotonic() + self.pause_s
        log.warning("%s (MongoDB paused for %.0f s): %r", what, self.pause_s, exc)

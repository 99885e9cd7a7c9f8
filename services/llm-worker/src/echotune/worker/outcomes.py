"""Attempts' outcomes into their providers' breakers and live figures (shared in Redis).

Idle, an outcome is recorded as it comes, in one round trip, before its answer goes on. Busy
(``hold.py``), a success that is no probe's, which changes no breaker's state, is only
counted in the process; :meth:`OutcomeRecorder.run` records what was counted at most the hold
apart: one round trip and one script call per provider, not one per answer. Anything else is
recorded at once, after the successes counted for its provider: a breaker sees each process's
outcomes in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from echotune.common.breaker import MOST_COUNTED, RECORD, CircuitBreakers, Outcome, Transition
from echotune.common.live_stats import Counts, LiveStats, attempt_counts
from echotune.common.scripts import Script, execute
from echotune.worker.hold import held_rounds

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Tally:
    """A provider's successes not recorded yet, and their live figures."""

    successes: int = 0
    counts: Counts = field(default_factory=Counts)


@dataclass(frozen=True, slots=True)
class _Now:
    """An outcome to record at once."""

    provider: str
    outcome: Outcome
    token: int | None
    retry_after_s: float
    counts: Counts | None


class OutcomeRecorder:
    def __init__(
        self, breakers: CircuitBreakers, live: LiveStats, hold: Callable[[], float]
    ) -> None:
        """``hold``: the least time between two records of counted successes now (0: idle)."""
        self._breakers, self._live, self._hold = breakers, live, hold
        self._tallies: dict[str, _Tally] = {}
        self._wake = asyncio.Event()
        self._landed = asyncio.Event()  # no flush in flight
        self._landed.set()

    async def record(
        self,
        provider: str,
        outcome: Outcome,
        *,
        token: int | None,
        retry_after_s: float,
        latency_ms: float,
        ttft_ms: float | None,
    ) -> Transition | None:
        """Record an attempt's outcome, or count it for later; the breaker's state change.
        Redis' errors are raised (what was counted of the provider is then dropped)."""
        counts = None
        if outcome is not Outcome.IGNORED:
            counts = attempt_counts(
                success=outcome is Outcome.SUCCESS,
                rate_limited=outcome is Outcome.RATE_LIMITED,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
            )
        if counts is not None and outcome is Outcome.SUCCESS and token is None and self._hold():
            tally = self._tallies.setdefault(provider, _Tally())
            tally.successes += 1
            tally.counts.update(counts)
            self._wake.set()
            return None
        tallies = {provider: self._tallies.pop(provider)} if provider in self._tallies else {}
        await self._landed.wait()  # successes counted before it and sent already land first
        return await self._send(tallies, _Now(provider, outcome, token, retry_after_s, counts))

    async def run(self) -> None:
        """Record the counted successes, at most the hold apart."""
        await held_rounds(self._wake, self._hold, self.flush)

    async def flush(self) -> None:
        """Record every counted success now (Redis' errors are logged)."""
        tallies, self._tallies = self._tallies, {}
        self._landed.clear()
        try:
            await self._send(tallies, None)
        except asyncio.CancelledError:  # shutting down: the last flush sends them (again: at
            self._count_again(tallies)  # least once, as the live figures are)
            raise
        except Exception:
            log.exception("could not record %d providers' successes", len(tallies))
        finally:
            self._landed.set()

    def _count_again(self, tallies: dict[str, _Tally]) -> None:
        for provider, tally in tallies.items():
            mine = self._tallies.setdefault(provider, _Tally())
            mine.successes += tally.successes
            mine.counts.update(tally.counts)

    async def _send(self, tallies: dict[str, _Tally], now: _Now | None) -> Transition | None:
        if not tallies and now is None:
            return None
        scripts: list[Script | None] = []
        redis = self._breakers.redis
        async with redis.pipeline(transaction=False) as pipe:
            for provider, tally in tallies.items():
                for first in range(0, tally.successes, MOST_COUNTED):
                    count = min(MOST_COUNTED, tally.successes - first)
                    self._breakers.queue_record(pipe, provider, Outcome.SUCCESS, count=count)
                    scripts.append(RECORD)
            if now is not None:
                self._breakers.queue_record(
                    pipe,
                    now.provider,
                    now.outcome,
                    token=now.token,
                    retry_after_s=now.retry_after_s,
                )
                scripts.append(RECORD)
            for provider, tally in tallies.items():
                self._live.queue_counts(pipe, provider, tally.counts)
            if now is not None and now.counts is not None:
                self._live.queue_counts(pipe, now.provider, now.counts)
            replies = await execute(redis, pipe, scripts)
        own = len(scripts) - 1 if now is not None else -1  # its error is raised, not logged
        if failed := [r for i, r in enumerate(replies) if isinstance(r, Exception) and i != own]:
            log.warning("%d commands recording outcomes failed: %s", len(failed), failed[0])
        return None if now is None else self._breakers.transition(now.provider, replies[own])

"""Attempts' outcomes into breakers and live figures: at once when idle, together when busy."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from echotune.common.breaker import BreakerPolicy, CircuitBreakers, Outcome, Transition
from echotune.common.keys import Keys
from echotune.common.live_stats import LiveStats
from echotune.common.messages import BreakerState
from echotune.worker import outcomes
from echotune.worker.outcomes import OutcomeRecorder
from tests.support.waiting import running, until


class Setup:
    def __init__(self, redis: Redis) -> None:
        keys = Keys(f"t{uuid.uuid4().hex[:8]}")
        self.breakers = CircuitBreakers(redis, keys, BreakerPolicy(consecutive_failures=2))
        self.live = LiveStats(redis, keys)
        self.hold_s = 0.0
        self.recorder = OutcomeRecorder(self.breakers, self.live, lambda: self.hold_s)

    async def success(self, provider: str = "p") -> None:
        assert await self.record(provider, Outcome.SUCCESS) is None

    async def record(self, provider: str, outcome: Outcome) -> Transition | None:
        return await self.recorder.record(
            provider, outcome, token=None, retry_after_s=0, latency_ms=30, ttft_ms=10
        )

    async def two_recorded(self) -> bool:
        return await self.counted() == (2, 2, 2)

    async def counted(self, provider: str = "p") -> tuple[int, int, int]:
        """(breaker's calls, live requests, live successes)."""
        snap, figures = await asyncio.gather(
            self.breakers.snapshot(provider), self.live.window(provider)
        )
        return snap.calls, figures.requests, figures.successes


@pytest.fixture
def setup(redis: Redis) -> Setup:
    return Setup(redis)


async def test_idle_an_outcome_is_recorded_before_the_answer_goes_on(setup: Setup) -> None:
    await setup.success()
    assert await setup.counted() == (1, 1, 1)


async def test_busy_successes_are_counted_then_recorded_together(setup: Setup) -> None:
    setup.hold_s = 60
    for provider in ("p", "p", "p", "q"):
        await setup.success(provider)
    assert await setup.counted("p") == (0, 0, 0), "recorded while busy"
    await setup.recorder.flush()
    assert (await setup.counted("p"), await setup.counted("q")) == ((3, 3, 3), (1, 1, 1))
    figures = await setup.live.window("p")
    assert (figures.latency_p50_ms, figures.ttft_p50_ms) != (None, None)


async def test_busy_a_failure_goes_at_once_after_its_providers_successes(setup: Setup) -> None:
    """In order: the success resets the failures in a row before the failure counts one."""
    setup.hold_s = 60
    await setup.success()
    await setup.success("q")
    assert await setup.record("p", Outcome.FAILURE) is None
    snap = await setup.breakers.snapshot("p")
    assert (snap.calls, snap.failures, snap.consecutive_failures) == (2, 1, 1)
    assert await setup.counted("q") == (0, 0, 0), "another provider's successes went along"
    transition = await setup.record("p", Outcome.FAILURE)
    assert transition is not None
    assert transition.new is BreakerState.OPEN


async def test_counted_successes_are_recorded_within_the_hold(setup: Setup) -> None:
    setup.hold_s = 0.05
    async with running(setup.recorder.run()):
        await setup.success()
        await setup.success()
        await until(setup.two_recorded, "the counted successes recorded")


async def test_more_successes_than_one_record_counts_go_in_several(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outcomes, "MOST_COUNTED", 2)
    counted: list[int] = []
    queue_record = setup.breakers.queue_record

    def spied(*args: Any, count: int = 1, **kwargs: Any) -> None:
        counted.append(count)
        queue_record(*args, count=count, **kwargs)

    monkeypatch.setattr(setup.breakers, "queue_record", spied)
    setup.hold_s = 60
    for _ in range(5):
        await setup.success()
    await setup.recorder.flush()
    assert counted == [2, 2, 1]
    assert await setup.counted() == (5, 5, 5)


async def flush_in_flight(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, list[str], asyncio.Task[None]]:
    """A counted success in a flush that waits for the gate before sending; the order of
    sends (``flush``, ``now``) and the flush."""
    gate, order = asyncio.Event(), []
    send = setup.recorder._send

    async def waiting(tallies: Any, now: Any) -> Any:
        if now is None:
            await gate.wait()
        order.append("flush" if now is None else "now")
        return await send(tallies, now)

    monkeypatch.setattr(setup.recorder, "_send", waiting)
    setup.hold_s = 60
    await setup.success()
    flush = asyncio.create_task(setup.recorder.flush())
    await asyncio.sleep(0)
    return gate, order, flush


async def test_an_outcome_waits_for_a_flush_in_flight(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush carries a success counted before the failure: it must land first."""
    gate, order, flush = await flush_in_flight(setup, monkeypatch)
    failure = asyncio.create_task(setup.record("p", Outcome.FAILURE))
    for _ in range(20):  # turns of the loop for a record that does not wait
        await asyncio.sleep(0)
    assert order == [], "the failure went out before the flush in flight"
    gate.set()
    await asyncio.gather(flush, failure)
    assert order == ["flush", "now"]
    snap = await setup.breakers.snapshot("p")
    assert (snap.calls, snap.consecutive_failures) == (2, 1)


async def test_a_flush_cancelled_mid_send_leaves_its_counts_to_the_last_one(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, _, flush = await flush_in_flight(setup, monkeypatch)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    gate.set()
    await setup.recorder.flush()
    assert await setup.counted() == (1, 1, 1)


async def test_a_failing_figure_is_logged_and_the_breaker_still_counts(
    setup: Setup, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    setup.hold_s = 60
    await setup.success()
    minute = int(time.time() // 60)
    for at in (minute, minute + 1):  # the minute may turn meanwhile
        await redis.set(setup.breakers.keys.live_stats("p", at), "not a hash")
    assert await setup.record("p", Outcome.FAILURE) is None
    assert (await setup.breakers.snapshot("p")).calls == 2
    assert "WRONGTYPE" in caplog.text

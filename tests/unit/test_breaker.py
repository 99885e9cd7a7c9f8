"""The Redis circuit breaker, against a real Redis, with a controlled clock."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from echotune.common.breaker import BreakerPolicy, CircuitBreakers, Outcome
from echotune.common.keys import Keys
from echotune.common.messages import BreakerState


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breakers(redis: Redis, clock: Clock) -> CircuitBreakers:
    policy = BreakerPolicy(cooldown_s=30, cooldown_cap_s=100, consecutive_failures=4)
    return CircuitBreakers(redis, Keys(f"t{uuid.uuid4().hex[:8]}"), policy, clock=clock)


async def record(b: CircuitBreakers, outcomes: str, provider: str = "p") -> None:
    for char in outcomes:
        await b.record(provider, Outcome.SUCCESS if char == "s" else Outcome.FAILURE)


async def test_opens_on_failure_rate_over_min_calls(breakers: CircuitBreakers) -> None:
    await record(breakers, "sfsf")
    assert (await breakers.acquire("p")).allowed, "4 calls are below the 5-call minimum"
    transition = await breakers.record("p", Outcome.FAILURE)
    assert transition is not None
    assert (transition.old, transition.new) == (BreakerState.CLOSED, BreakerState.OPEN)
    permit = await breakers.acquire("p")
    assert not permit.allowed
    assert permit.reason == "breaker_open"
    snap = await breakers.snapshot("p")
    assert snap.state is BreakerState.OPEN
    assert snap.next_probe_at == pytest.approx(breakers._clock() + 30)


async def test_stays_closed_below_the_failure_rate(breakers: CircuitBreakers) -> None:
    await record(breakers, "ssfssfssf")
    assert (await breakers.snapshot("p")).state is BreakerState.CLOSED


async def test_opens_on_consecutive_failures(breakers: CircuitBreakers) -> None:
    await record(breakers, "sssssssssfff")
    assert (await breakers.snapshot("p")).state is BreakerState.CLOSED
    await record(breakers, "f")
    assert (await breakers.snapshot("p")).state is BreakerState.OPEN


async def test_failures_leave_the_window(breakers: CircuitBreakers, clock: Clock) -> None:
    await record(breakers, "fff")
    clock.now += 61
    await record(breakers, "sss")
    await record(breakers, "f")
    snap = await breakers.snapshot("p")
    assert snap.state is BreakerState.CLOSED
    assert (snap.calls, snap.failures) == (4, 1)


async def test_half_open_lets_exactly_one_probe_through(
    breakers: CircuitBreakers, clock: Clock
) -> None:
    await record(breakers, "fffff")
    clock.now += 30
    permits = await asyncio.gather(*(breakers.acquire("p") for _ in range(20)))
    assert sum(p.allowed for p in permits) == 1
    (probe,) = [p for p in permits if p.allowed]
    assert probe.probe
    assert {p.reason for p in permits if not p.allowed} == {"probe_in_flight"}
    transition = await breakers.record("p", Outcome.SUCCESS, probe=True)
    assert transition is not None
    assert transition.new is BreakerState.CLOSED
    assert (await breakers.acquire("p")).allowed


async def test_failed_probe_reopens_with_a_longer_cooldown(
    breakers: CircuitBreakers, clock: Clock
) -> None:
    await record(breakers, "fffff")
    opened = clock.now
    clock.now += 30
    assert (await breakers.acquire("p")).probe
    await breakers.record("p", Outcome.FAILURE, probe=True)
    snap = await breakers.snapshot("p")
    assert snap.state is BreakerState.OPEN
    assert snap.trips == 2
    assert snap.next_probe_at == pytest.approx(opened + 30 + 60)
    clock.now += 60
    assert (await breakers.acquire("p")).probe
    await breakers.record("p", Outcome.FAILURE, probe=True)
    assert (await breakers.snapshot("p")).next_probe_at == pytest.approx(clock.now + 100)


async def test_dead_probe_lease_expires(breakers: CircuitBreakers, clock: Clock) -> None:
    await record(breakers, "fffff")
    clock.now += 30
    assert (await breakers.acquire("p")).probe
    assert not (await breakers.acquire("p")).allowed
    clock.now += 61
    assert (await breakers.acquire("p")).probe


async def test_cancelled_probe_frees_the_lease(breakers: CircuitBreakers, clock: Clock) -> None:
    await record(breakers, "fffff")
    clock.now += 30
    assert (await breakers.acquire("p")).probe
    await breakers.record("p", Outcome.IGNORED, probe=True)
    assert (await breakers.acquire("p")).probe


async def test_rate_limit_is_a_cooldown_not_a_failure(
    breakers: CircuitBreakers, clock: Clock
) -> None:
    for _ in range(10):
        await breakers.record("p", Outcome.RATE_LIMITED, retry_after_s=2)
    snap = await breakers.snapshot("p")
    assert snap.state is BreakerState.CLOSED
    assert snap.failures == 0
    permit = await breakers.acquire("p")
    assert not permit.allowed
    assert permit.reason == "rate_limited"
    clock.now += 2
    assert (await breakers.acquire("p")).allowed


async def test_providers_are_independent(breakers: CircuitBreakers) -> None:
    await record(breakers, "fffff", provider="a")
    assert not (await breakers.acquire("a")).allowed
    assert (await breakers.acquire("b")).allowed

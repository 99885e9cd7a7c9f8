"""The Redis circuit breaker, against a real Redis whose clock the tests move forward.

The breaker reads time from Redis (``TIME``) only, so "time passes" is done by moving every
stored time of the breaker back (:func:`travel`); production code has no clock seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from echotune.common.breaker import (
    MOST_COUNTED,
    RECORD,
    BreakerPolicy,
    CircuitBreakers,
    Outcome,
    Permit,
    Transition,
)
from echotune.common.keys import Keys
from echotune.common.messages import BreakerState
from echotune.common.redis import create_redis
from echotune.common.scripts import execute
from tests.support.flaky_proxy import ReplyDroppingProxy, reply_dropping_proxy

POLICY = BreakerPolicy(cooldown_s=30, cooldown_cap_s=100, consecutive_failures=4)

# Shifts a breaker's stored times (hash fields in ms, window scores) back by ARGV[1] ms.
_TRAVEL = """
local back = tonumber(ARGV[1])
for _, field in ipairs({'opened_at', 'open_until', 'probe_until', 'rl_until'}) do
  local value = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  if value > 0 then redis.call('HSET', KEYS[1], field, value - back) end
end
for i = 2, 3 do
  local entries = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
  for j = 1, #entries, 2 do
    redis.call('ZADD', KEYS[i], tonumber(entries[j + 1]) - back, entries[j])
  end
end
"""


async def travel(breakers: CircuitBreakers, seconds: float, provider: str = "p") -> None:
    """As if ``seconds`` passed on Redis' clock, for this breaker."""
    key = breakers.keys.breaker(provider)
    script = breakers.redis.register_script(_TRAVEL)
    await script(keys=[key, f"{key}:ok", f"{key}:fail"], args=[int(seconds * 1000)])


async def redis_now(redis: Redis) -> float:
    seconds, micros = await redis.time()
    return seconds + micros / 1e6


@pytest.fixture
def breakers(redis: Redis) -> CircuitBreakers:
    return CircuitBreakers(redis, Keys(f"t{uuid.uuid4().hex[:8]}"), POLICY)


async def record(b: CircuitBreakers, outcomes: str, provider: str = "p") -> None:
    for char in outcomes:
        await b.record(provider, Outcome.SUCCESS if char == "s" else Outcome.FAILURE)


async def half_open_probe(breakers: CircuitBreakers) -> Permit:
    await record(breakers, "fffff")
    await travel(breakers, 30)
    permit = await breakers.acquire("p")
    assert permit.probe
    return permit


async def state(breakers: CircuitBreakers) -> BreakerState:
    return (await breakers.snapshot("p")).state


async def test_an_open_breaker_past_its_cooldown_says_half_open_with_no_call_coming(
    breakers: CircuitBreakers,
) -> None:
    """It said open for good with its next probe in the past: the health page called the
    provider unhealthy and a switch to it was refused until someone called it anyway."""
    await record(breakers, "ffff")
    opened = await breakers.snapshot("p")
    assert opened.state is BreakerState.OPEN
    assert opened.next_probe_at is not None
    await travel(breakers, 30)
    cooled = await breakers.snapshot("p")
    assert (cooled.state, cooled.next_probe_at) == (BreakerState.HALF_OPEN, None)
    assert (await breakers.acquire("p")).probe  # and the next call is that probe


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
    assert snap.next_probe_at == pytest.approx(await redis_now(breakers.redis) + 30, abs=1)


async def test_stays_closed_below_the_failure_rate(breakers: CircuitBreakers) -> None:
    await record(breakers, "ssfssfssf")
    assert await state(breakers) is BreakerState.CLOSED


async def test_opens_on_consecutive_failures(breakers: CircuitBreakers) -> None:
    await record(breakers, "sssssssssfff")
    assert await state(breakers) is BreakerState.CLOSED
    await record(breakers, "f")
    assert await state(breakers) is BreakerState.OPEN


async def test_failures_leave_the_window(breakers: CircuitBreakers) -> None:
    await record(breakers, "fff")
    await travel(breakers, 61)
    await record(breakers, "sss")
    await record(breakers, "f")
    snap = await breakers.snapshot("p")
    assert snap.state is BreakerState.CLOSED
    assert (snap.calls, snap.failures) == (4, 1)


async def test_half_open_lets_exactly_one_probe_through(breakers: CircuitBreakers) -> None:
    await record(breakers, "fffff")
    await travel(breakers, 30)
    permits = await asyncio.gather(*(breakers.acquire("p") for _ in range(20)))
    assert sum(p.allowed for p in permits) == 1
    (probe,) = [p for p in permits if p.allowed]
    assert probe.probe
    assert {p.reason for p in permits if not p.allowed} == {"probe_in_flight"}
    transition = await breakers.record("p", Outcome.SUCCESS, token=probe.token)
    assert transition is not None
    assert transition.new is BreakerState.CLOSED
    assert (await breakers.acquire("p")).allowed


async def test_failed_probe_reopens_with_a_longer_cooldown(breakers: CircuitBreakers) -> None:
    probe = await half_open_probe(breakers)
    await breakers.record("p", Outcome.FAILURE, token=probe.token)
    snap = await breakers.snapshot("p")
    assert snap.state is BreakerState.OPEN
    assert snap.trips == 2
    assert snap.next_probe_at == pytest.approx(await redis_now(breakers.redis) + 60, abs=1)
    await travel(breakers, 60)
    probe = await breakers.acquire("p")
    assert probe.probe
    await breakers.record("p", Outcome.FAILURE, token=probe.token)
    snap = await breakers.snapshot("p")
    assert snap.next_probe_at == pytest.approx(await redis_now(breakers.redis) + 100, abs=1)


async def test_dead_probe_lease_expires(breakers: CircuitBreakers) -> None:
    first = await half_open_probe(breakers)
    assert not (await breakers.acquire("p")).allowed
    await travel(breakers, POLICY.probe_timeout_s + 1)
    second = await breakers.acquire("p")
    assert second.probe
    assert second.token != first.token


async def test_cancelled_probe_frees_the_lease(breakers: CircuitBreakers) -> None:
    probe = await half_open_probe(breakers)
    await breakers.record("p", Outcome.IGNORED, token=probe.token)
    assert not await breakers.renew(probe), "a released lease cannot be renewed"
    assert (await breakers.acquire("p")).probe


async def test_rate_limit_is_a_cooldown_not_a_failure(breakers: CircuitBreakers) -> None:
    began = time.time()
    for _ in range(10):
        await breakers.record("p", Outcome.RATE_LIMITED, retry_after_s=2)
    snap = await breakers.snapshot("p")
    assert snap.state is BreakerState.CLOSED
    assert snap.failures == 0
    permit = await breakers.acquire("p")
    assert not permit.allowed
    assert permit.reason == "rate_limited"
    assert began + 2 - 0.01 <= permit.retry_at <= time.time() + 2 + 0.01
    await travel(breakers, 2)
    assert (await breakers.acquire("p")).allowed


@pytest.mark.parametrize("retry_after_s", [1e308, 365 * 86400.0])
async def test_a_rate_limit_cooldown_lasts_at_most_the_longest_cooldown(
    breakers: CircuitBreakers, retry_after_s: float
) -> None:
    """A huge Retry-After raised OverflowError (the call's outcome was lost, a probe's lease
    left held), or skipped the provider for a year."""
    began = time.time()
    await breakers.record("p", Outcome.RATE_LIMITED, retry_after_s=retry_after_s)
    permit = await breakers.acquire("p")
    assert permit.reason == "rate_limited"
    cap = POLICY.cooldown_cap_s
    assert began + cap - 0.01 <= permit.retry_at <= time.time() + cap + 0.01
    await travel(breakers, POLICY.cooldown_cap_s)
    assert (await breakers.acquire("p")).allowed


async def test_providers_are_independent(breakers: CircuitBreakers) -> None:
    await record(breakers, "fffff", provider="a")
    assert not (await breakers.acquire("a")).allowed
    assert (await breakers.acquire("b")).allowed


# --- issue 16: fencing, shared clock, bounded windows -------------------------------------


async def test_a_call_admitted_before_the_trip_cannot_decide_half_open(
    breakers: CircuitBreakers,
) -> None:
    await half_open_probe(breakers)
    # A call admitted while the breaker was closed ends now: an ordinary observation.
    await breakers.record("p", Outcome.SUCCESS)
    assert await state(breakers) is BreakerState.HALF_OPEN, "a non-probe success closed it"
    await breakers.record("p", Outcome.FAILURE)
    assert await state(breakers) is BreakerState.HALF_OPEN, "a non-probe failure re-opened it"
    await breakers.record("p", Outcome.RATE_LIMITED, retry_after_s=5)
    assert await state(breakers) is BreakerState.HALF_OPEN
    assert not (await breakers.acquire("p")).allowed, "the probe is still in flight"


async def test_only_the_lease_holder_decides_half_open(breakers: CircuitBreakers) -> None:
    stale = await half_open_probe(breakers)
    await travel(breakers, POLICY.probe_timeout_s + 1)  # its holder went silent
    holder = await breakers.acquire("p")
    assert holder.probe
    assert holder.token is not None
    assert stale.token is not None
    assert holder.token > stale.token
    assert await breakers.record("p", Outcome.FAILURE, token=stale.token) is None
    assert await breakers.record("p", Outcome.SUCCESS, token=stale.token) is None
    assert await state(breakers) is BreakerState.HALF_OPEN
    assert not await breakers.renew(stale), "a stale token cannot renew the lease"
    transition = await breakers.record("p", Outcome.SUCCESS, token=holder.token)
    assert transition is not None
    assert transition.new is BreakerState.CLOSED


async def test_a_renewed_lease_outlives_the_probe_timeout(breakers: CircuitBreakers) -> None:
    probe = await half_open_probe(breakers)
    for _ in range(5):  # the probe streams for 5 lease lengths, renewing as it goes
        await travel(breakers, POLICY.probe_timeout_s * 0.9)
        assert await breakers.renew(probe)
        refused = await breakers.acquire("p")
        assert (refused.allowed, refused.reason) == (False, "probe_in_flight")
    await breakers.record("p", Outcome.FAILURE, token=probe.token)
    assert await state(breakers) is BreakerState.OPEN


async def test_holding_renews_the_lease_while_the_body_runs(redis: Redis) -> None:
    # A 1.5 s lease (renewed every 0.5 s): a loaded machine stalling a renewal for a second
    # must not hand the probe to the next caller.
    policy = BreakerPolicy(cooldown_s=0.05, probe_timeout_s=1.5, consecutive_failures=1)
    breakers = CircuitBreakers(redis, Keys(f"t{uuid.uuid4().hex[:8]}"), policy)
    await breakers.record("p", Outcome.FAILURE)
    deadline = time.monotonic() + 10
    probe = await breakers.acquire("p")
    while not probe.probe and time.monotonic() < deadline:
        probe = await breakers.acquire("p")
    assert probe.probe
    refusals = 0
    async with breakers.holding(probe):
        started = time.monotonic()
        while time.monotonic() - started < 4.0:  # > 2 lease lengths
            assert not (await breakers.acquire("p")).allowed
            refusals += 1
            await asyncio.sleep(0.1)
    assert refusals > 10
    # once the holder is gone, the lease lapses and another caller may probe
    while not (permit := await breakers.acquire("p")).probe:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert permit.token != probe.token


async def test_success_window_is_pruned_on_every_record(breakers: CircuitBreakers) -> None:
    await record(breakers, "s" * 50)
    await travel(breakers, POLICY.window_s + 1)
    await record(breakers, "s")
    ok = breakers.keys.breaker("p") + ":ok"
    assert await breakers.redis.zcard(ok) == 1, "successes older than the window are kept"
    ttl_ms = await breakers.redis.pttl(ok)
    assert 0 < ttl_ms <= POLICY.window_s * 1000


_SKEWED_WORKER = """
import asyncio, json, sys, time
real = time.time
time.time = lambda: real() + float(sys.argv[3])  # this host's clock is off
from redis.asyncio import Redis
from echotune.common.breaker import BreakerPolicy, CircuitBreakers, Outcome
from echotune.common.keys import Keys

async def main():
    redis = Redis.from_url(sys.argv[1], decode_responses=True)
    policy = BreakerPolicy(**json.loads(sys.argv[4]))
    breakers = CircuitBreakers(redis, Keys(sys.argv[2]), policy)
    for _ in range(policy.consecutive_failures):
        await breakers.record("p", Outcome.FAILURE)
    await redis.aclose()

asyncio.run(main())
"""


@pytest.mark.parametrize("skew_s", [3600, -3600])
async def test_breaker_time_is_redis_time_not_the_workers(
    redis: Redis, redis_server_url: str, skew_s: int
) -> None:
    """A worker whose clock is an hour off trips the breaker; others see the right cool-down."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    # 4 s: the worker's exit and the first look must fit in it on a loaded machine
    policy = {"cooldown_s": 4.0, "consecutive_failures": 3, "probe_timeout_s": 5.0}
    worker = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", _SKEWED_WORKER, redis_server_url, namespace],
        *[str(skew_s), json.dumps(policy)],
    )
    assert await asyncio.wait_for(worker.wait(), 60) == 0
    breakers = CircuitBreakers(redis, Keys(namespace), BreakerPolicy(**policy))
    snap = await breakers.snapshot("p")
    assert snap.state is BreakerState.OPEN
    first = await breakers.acquire("p")
    assert not first.allowed, "the cool-down was skipped"
    deadline = time.monotonic() + 20
    while not (permit := await breakers.acquire("p")).allowed:
        assert time.monotonic() < deadline, f"still {permit.reason} long after the cool-down"
        await asyncio.sleep(0.1)
    assert permit.probe
    assert snap.opened_at == pytest.approx(await redis_now(redis), abs=20)


async def test_successes_recorded_at_once_count_as_many_calls(breakers: CircuitBreakers) -> None:
    """A worker records a busy while's successes in one call: each counts in the window."""
    for _ in range(3):
        await breakers.record("p", Outcome.FAILURE)
    async with breakers.redis.pipeline(transaction=False) as pipe:
        breakers.queue_record(pipe, "p", Outcome.SUCCESS, count=MOST_COUNTED)
        breakers.queue_record(pipe, "p", Outcome.SUCCESS, count=2)
        replies = await execute(breakers.redis, pipe, [RECORD, RECORD])
    assert [breakers.transition("p", reply) for reply in replies] == [None, None]
    snap = await breakers.snapshot("p")
    assert (snap.calls, snap.failures, snap.consecutive_failures) == (MOST_COUNTED + 5, 3, 0)


@pytest.mark.parametrize(
    ("outcome", "count", "token"),
    [
        (Outcome.SUCCESS, MOST_COUNTED + 1, None),
        (Outcome.FAILURE, 2, None),
        (Outcome.SUCCESS, 2, 7),
    ],
)
async def test_only_plain_successes_are_recorded_together(
    breakers: CircuitBreakers, outcome: Outcome, count: int, token: int | None
) -> None:
    """A probe's outcome decides a half-open breaker alone; failures count in a row."""
    pipe = breakers.redis.pipeline(transaction=False)
    with pytest.raises(ValueError, match="cannot be recorded at once"):
        breakers.queue_record(pipe, "p", outcome, count=count, token=token)


@contextlib.asynccontextmanager
async def losing_replies(
    redis_server_url: str, breakers: CircuitBreakers
) -> AsyncIterator[tuple[CircuitBreakers, ReplyDroppingProxy]]:
    """The breakers seen through a proxy that can lose a reply (redis-py then sends the call
    again); the scripts are loaded first, so the call whose reply is lost is applied."""
    await breakers.record("warm-up", Outcome.SUCCESS)
    await breakers.acquire("warm-up")
    async with reply_dropping_proxy(redis_server_url) as proxy:
        client = create_redis(proxy.url)
        try:
            yield CircuitBreakers(client, breakers.keys, POLICY), proxy
        finally:
            await client.aclose()


@pytest.mark.single_node(reason="a proxy in front of the one Redis")
async def test_failures_whose_replies_were_lost_count_once(
    redis_server_url: str, breakers: CircuitBreakers
) -> None:
    """Each counted twice: two failures tripped a breaker that trips at four in a row."""
    async with losing_replies(redis_server_url, breakers) as (via_proxy, proxy):
        for _ in range(2):
            proxy.drop_next_reply(b"EVALSHA")
            await via_proxy.record("p", Outcome.FAILURE)
    assert proxy.dropped == 2
    snap = await breakers.snapshot("p")
    assert (snap.calls, snap.consecutive_failures) == (2, 2)
    assert snap.state is BreakerState.CLOSED


@pytest.mark.single_node(reason="a proxy in front of the one Redis")
async def test_a_probe_grant_whose_reply_was_lost_is_still_granted(
    redis_server_url: str, breakers: CircuitBreakers
) -> None:
    """The retry found its own lease and answered probe_in_flight: nobody probed for a lease."""
    await record(breakers, "ffff")
    await travel(breakers, 30)
    async with losing_replies(redis_server_url, breakers) as (via_proxy, proxy):
        proxy.drop_next_reply(b"EVALSHA")
        permit = await via_proxy.acquire("p")
    assert proxy.dropped == 1
    assert permit.probe
    assert permit.transition is not None, "the grant's own reply was lost: this one tells it"
    assert not (await breakers.acquire("p")).allowed  # still the only one


async def test_the_probe_that_leaves_open_tells_its_transition_once(
    breakers: CircuitBreakers,
) -> None:
    """open → half_open happened in the acquire, which told nobody: the transitions metric
    never counted it (closed → open and half_open → closed only)."""
    first = await half_open_probe(breakers)
    assert first.transition == Transition("p", BreakerState.OPEN, BreakerState.HALF_OPEN)
    await travel(breakers, POLICY.probe_timeout_s + 1)  # its lease lapsed: a new probe
    second = await breakers.acquire("p")
    assert second.probe
    assert second.transition is None, "half_open all along"
    await breakers.record("p", Outcome.SUCCESS, token=second.token)
    assert (await breakers.acquire("p")).transition is None

"""Circuit breaker per provider, kept in Redis so that every worker shares it.

Every decision and transition runs in one Lua script, so it is atomic across processes.

* closed → open: at least ``min_calls`` calls in the rolling ``window_s`` with a failure
  rate ≥ ``failure_rate``, or ``consecutive_failures`` failures in a row.
* open → half-open: after a cool-down of ``cooldown_s · 2^(trips−1)`` (capped at
  ``cooldown_cap_s``), the next caller takes the single probe lease; nobody else passes
  while the probe runs (the lease expires after ``probe_timeout_s`` if its holder dies).
* half-open → closed on the probe's success, → open (longer cool-down) on its failure.
* A 429 is not a failure: it sets a rate-limit cool-down of its ``Retry-After`` during which
  the provider is skipped. A cancelled call counts for nothing (and frees a probe lease).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.common.messages import BreakerState


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    RATE_LIMITED = "rate_limited"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_rate: float = 0.5
    min_calls: int = 5
    window_s: float = 60.0
    consecutive_failures: int = 5
    cooldown_s: float = 30.0
    cooldown_cap_s: float = 300.0
    probe_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to "may I call this provider now?"."""

    allowed: bool
    state: BreakerState
    probe: bool = False
    reason: str | None = None
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    provider: str
    old: BreakerState
    new: BreakerState


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    state: BreakerState
    failures: int
    calls: int
    consecutive_failures: int
    trips: int
    opened_at: float | None
    next_probe_at: float | None
    rate_limited_until: float | None


_ACQUIRE = """
local h = KEYS[1]
local now = tonumber(ARGV[1])
local probe_ms = tonumber(ARGV[2])
local state = redis.call('HGET', h, 'state') or 'closed'
local rl = tonumber(redis.call('HGET', h, 'rl_until') or '0')
if state == 'closed' then
  if now < rl then return {0, state, 'rate_limited', rl} end
  return {1, state, '', 0}
end
if state == 'open' then
  local until_ms = tonumber(redis.call('HGET', h, 'open_until') or '0')
  if now < until_ms then return {0, state, 'breaker_open', until_ms} end
  redis.call('HSET', h, 'state', 'half_open', 'probe_until', now + probe_ms)
  return {2, 'half_open', 'open->half_open', 0}
end
local probe_until = tonumber(redis.call('HGET', h, 'probe_until') or '0')
if now < probe_until then return {0, state, 'probe_in_flight', probe_until} end
redis.call('HSET', h, 'probe_until', now + probe_ms)
return {2, state, '', 0}
"""

_RECORD = """
local h, ok, fail = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local outcome, probe = ARGV[2], ARGV[3] == '1'
local retry_ms, window_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local rate, min_calls, max_consecutive = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local cooldown_ms, cap_ms, member = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local state = redis.call('HGET', h, 'state') or 'closed'
local function trip()
  local trips = tonumber(redis.call('HGET', h, 'trips') or '0') + 1
  local wait = math.min(cooldown_ms * 2 ^ (trips - 1), cap_ms)
  redis.call('HSET', h, 'state', 'open', 'opened_at', now, 'open_until', now + wait,
             'trips', trips, 'probe_until', 0)
  redis.call('DEL', ok, fail)
  return 'open'
end
local new = state
if outcome == 'ignored' then
  if probe and state == 'half_open' then redis.call('HSET', h, 'probe_until', 0) end
elseif outcome == 'rate_limited' then
  redis.call('HSET', h, 'rl_until', now + retry_ms)
  if probe and state == 'half_open' then
    redis.call('HSET', h, 'state', 'open', 'open_until', now + retry_ms, 'probe_until', 0)
    new = 'open'
  end
elseif outcome == 'success' then
  redis.call('HSET', h, 'consecutive', 0)
  if state == 'half_open' then
    redis.call('HSET', h, 'state', 'closed', 'trips', 0, 'probe_until', 0)
    redis.call('HDEL', h, 'opened_at', 'open_until')
    redis.call('DEL', ok, fail)
    new = 'closed'
  else
    redis.call('ZADD', ok, now, member)
  end
else
  local consecutive = redis.call('HINCRBY', h, 'consecutive', 1)
  if state == 'half_open' then
    new = trip()
  elseif state == 'closed' then
    redis.call('ZADD', fail, now, member)
    redis.call('ZREMRANGEBYSCORE', ok, '-inf', now - window_ms)
    redis.call('ZREMRANGEBYSCORE', fail, '-inf', now - window_ms)
    local fails = redis.call('ZCARD', fail)
    local calls = fails + redis.call('ZCARD', ok)
    if consecutive >= max_consecutive or (calls >= min_calls and fails / calls >= rate) then
      new = trip()
    end
  end
end
redis.call('PEXPIRE', ok, window_ms)
redis.call('PEXPIRE', fail, window_ms)
return {state, new}
"""


class CircuitBreakers:
    """The breakers of all providers in one namespace."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        policy: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis, self.keys = redis, keys
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)
        self._seq = 0

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def acquire(self, provider: str) -> Permit:
        """May ``provider`` be called now? A granted probe must be followed by ``record``."""
        probe_ms = int(self.policy.probe_timeout_s * 1000)
        allowed, state, reason, until = await self._acquire(
            keys=[self.keys.breaker(provider)], args=[self._now_ms(), probe_ms]
        )
        return Permit(
            allowed=int(allowed) > 0,
            state=BreakerState(state),
            probe=int(allowed) == 2,
            reason=str(reason) or None,
            retry_at=int(until) / 1000 if int(until) else None,
        )

    async def record(
        self, provider: str, outcome: Outcome, *, probe: bool = False, retry_after_s: float = 0
    ) -> Transition | None:
        """Record a call's outcome; the state change it caused, if any."""
        p = self.policy
        self._seq += 1
        now = self._now_ms()
        key = self.keys.breaker(provider)
        old, new = await self._record(
            keys=[key, f"{key}:ok", f"{key}:fail"],
            args=[
                now,
                outcome.value,
                "1" if probe else "0",
                int(retry_after_s * 1000),
                int(p.window_s * 1000),
                p.failure_rate,
                p.min_calls,
                p.consecutive_failures,
                int(p.cooldown_s * 1000),
                int(p.cooldown_cap_s * 1000),
                f"{now}:{id(self)}:{self._seq}",
            ],
        )
        if old == new:
            return None
        return Transition(provider, BreakerState(old), BreakerState(new))

    async def snapshot(self, provider: str) -> BreakerSnapshot:
        key = self.keys.breaker(provider)
        now = self._now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.zcount(f"{key}:ok", now - int(self.policy.window_s * 1000), "+inf")
            pipe.zcount(f"{key}:fail", now - int(self.policy.window_s * 1000), "+inf")
            fields, ok, fail = await pipe.execute()
        return _snapshot(fields, int(ok), int(fail), now)

    async def reset(self, provider: str) -> None:
        key = self.keys.breaker(provider)
        await self.redis.delete(key, f"{key}:ok", f"{key}:fail")


def _snapshot(fields: dict[str, Any], ok: int, fail: int, now: int) -> BreakerSnapshot:
    def seconds(name: str) -> float | None:
        value = int(float(fields.get(name) or 0))
        return value / 1000 if value else None

    state = BreakerState(fields.get("state", "closed"))
    rate_limited = seconds("rl_until")
    return BreakerSnapshot(
        state=state,
        failures=fail,
        calls=ok + fail,
        consecutive_failures=int(fields.get("consecutive") or 0),
        trips=int(fields.get("trips") or 0),
        opened_at=seconds("opened_at") if state is not BreakerState.CLOSED else None,
        next_probe_at=seconds("open_until") if state is BreakerState.OPEN else None,
        rate_limited_until=rate_limited if rate_limited and rate_limited * 1000 > now else None,
    )

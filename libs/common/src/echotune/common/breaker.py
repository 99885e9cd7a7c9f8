"""Circuit breaker per provider, kept in Redis so that every worker shares it.

Every decision and transition runs in one Lua script, so it is atomic across processes, and
every time is Redis' own (``TIME``): workers' clocks may disagree, Redis' is the one they share.

* closed → open: at least ``min_calls`` calls in the rolling ``window_s`` with a failure
  rate ≥ ``failure_rate``, or ``consecutive_failures`` failures in a row.
* open → half-open: after a cool-down of ``cooldown_s · 2^(trips−1)`` (capped at
  ``cooldown_cap_s``), the next caller takes the single probe lease; nobody else passes
  while the probe runs.
* The probe lease carries a fencing token (``Permit.token``, increasing forever). Only the
  current holder's outcome decides half-open: success → closed, failure → open (longer
  cool-down). Any other outcome (a call admitted before the trip, a probe whose lease was
  taken over) is an ordinary observation: it counts in the windows and may trip a closed
  breaker, never flip a half-open one.
* The lease lasts ``probe_timeout_s`` and its holder renews it while the probe runs
  (:meth:`CircuitBreakers.holding`), so a long answer keeps it and a dead holder loses it.
* A 429 is not a failure: it sets a rate-limit cool-down of its ``Retry-After`` (at most
  ``cooldown_cap_s``) during which the provider is skipped. A cancelled call counts for
  nothing (and frees a probe lease).
* Every call carries an id, so one that redis-py sends again after a lost reply is applied
  once: a record is skipped when its id is in ``:calls`` (the last minute's ids), a probe
  grant found again by its id is returned again.

Memory: the hash is one per provider; the ``:ok``/``:fail`` windows are pruned to
``window_s`` on every record and expire ``window_s`` after the last one; ``:calls`` holds the
ids of the last ``CALLS_KEPT_MS`` of records and expires as long after the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from echotune.common.keys import Keys
from echotune.common.messages import BreakerState
from echotune.common.scripts import Arg, Script, execute, load_all

log = logging.getLogger(__name__)


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
    probe_timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class Transition:
    provider: str
    old: BreakerState
    new: BreakerState


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to "may I call this provider now?"; a probe's carries its fencing token."""

    provider: str
    allowed: bool
    state: BreakerState
    token: int | None = None
    reason: str | None = None
    retry_at: float | None = None
    transition: Transition | None = None
    """open → half_open, when this grant made the breaker leave open (counted once)."""

    @property
    def probe(self) -> bool:
        return self.token is not None


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


CALLS_KEPT_MS = 60_000
"""How long a record's id is kept: longer than redis-py's retries of one call."""

# Redis' clock in ms; scripts are replicated by effects (Redis ≥ 5 default, 7 only), so
# reading TIME before writing is allowed.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: hash. ARGV: lease ms, call id. → {0 refused | 1 allowed | 2 probe, state, reason,
# wait ms, token, the state before its grant (a probe's; the same again for a grant asked again)}
_ACQUIRE = (
    _NOW
    + """
local h, lease_ms = KEYS[1], tonumber(ARGV[1])
local state = redis.call('HGET', h, 'state') or 'closed'
if state == 'closed' then
  local rl = tonumber(redis.call('HGET', h, 'rl_until') or '0')
  if now < rl then return {0, state, 'rate_limited', rl - now, 0} end
  return {1, state, '', 0, 0}
end
if state == 'open' then
  local until_ms = tonumber(redis.call('HGET', h, 'open_until') or '0')
  if now < until_ms then return {0, state, 'breaker_open', until_ms - now, 0} end
else
  local lease = tonumber(redis.call('HGET', h, 'probe_until') or '0')
  if now < lease then
    if redis.call('HGET', h, 'probe_call') == ARGV[2] then  -- this call's grant, asked again
      local grant = redis.call('HMGET', h, 'probe_token', 'probe_from')
      return {2, state, '', 0, tonumber(grant[1]), grant[2] or state}
    end
    return {0, state, 'probe_in_flight', lease - now, 0}
  end
end
local token = redis.call('HINCRBY', h, 'probe_token', 1)
redis.call('HSET', h, 'state', 'half_open', 'probe_until', now + lease_ms, 'probe_call', ARGV[2],
  'probe_from', state)
return {2, 'half_open', '', 0, token, state}
"""
)

# KEYS: hash. ARGV: token, lease ms. → 1 when the token holds the lease (now extended), else 0.
# A lease released by its outcome (probe_until 0) is not held any more.
_RENEW = (
    _NOW
    + """
local h = KEYS[1]
if redis.call('HGET', h, 'state') ~= 'half_open' then return 0 end
if redis.call('HGET', h, 'probe_token') ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', h, 'probe_until') or '0') == 0 then return 0 end
redis.call('HSET', h, 'probe_until', now + tonumber(ARGV[2]))
return 1
"""
)

# KEYS: hash, ok window, fail window, call ids. ARGV: outcome, token ('' if none), retry ms,
# window ms, failure rate, min calls, consecutive failures, cool-down ms, cap ms, call id, ms
# call ids are kept, calls (outcomes alike counted at once). → {old state, new state} (a call
# seen before changes nothing)
_RECORD = (
    _NOW
    + """
local h, ok, fail, calls = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local outcome, token, retry_ms, window_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local rate, min_calls, max_consecutive = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cooldown_ms, cap_ms = tonumber(ARGV[8]), tonumber(ARGV[9])
local state = redis.call('HGET', h, 'state') or 'closed'
if redis.call('ZSCORE', calls, ARGV[10]) then return {state, state} end
redis.call('ZADD', calls, now, ARGV[10])
redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - tonumber(ARGV[11]))
redis.call('PEXPIRE', calls, ARGV[11])
local function trip()
  local trips = tonumber(redis.call('HGET', h, 'trips') or '0') + 1
  local wait = math.min(cooldown_ms * 2 ^ (trips - 1), cap_ms)
  redis.call('HSET', h, 'state', 'open', 'opened_at', now, 'open_until', now + wait,
             'trips', trips, 'probe_until', 0)
  redis.call('DEL', ok, fail)
  return 'open'
end
if outcome == 'rate_limited' then redis.call('HSET', h, 'rl_until', now + retry_ms) end
if state == 'half_open' and token ~= '' and redis.call('HGET', h, 'probe_token') == token then
  if outcome == 'ignored' then
    redis.call('HSET', h, 'probe_until', 0)
    return {state, state}
  elseif outcome == 'rate_limited' then
    redis.call('HSET', h, 'state', 'open', 'open_until', now + retry_ms, 'probe_until', 0)
    return {state, 'open'}
  elseif outcome == 'success' then
    redis.call('HSET', h, 'state', 'closed', 'trips', 0, 'consecutive', 0)
    redis.call('HDEL', h, 'opened_at', 'open_until', 'probe_until')
    redis.call('DEL', ok, fail)
    return {state, 'closed'}
  end
  redis.call('HINCRBY', h, 'consecutive', 1)
  return {state, trip()}
end
if outcome ~= 'success' and outcome ~= 'failure' then return {state, state} end
local consecutive = 0
if outcome == 'success' then
  redis.call('HSET', h, 'consecutive', 0)
else
  consecutive = redis.call('HINCRBY', h, 'consecutive', 1)
end
local count = tonumber(ARGV[12])
local last, members = redis.call('HINCRBY', h, 'seq', count), {}
for member = last - count + 1, last do
  members[#members + 1] = now
  members[#members + 1] = member
end
redis.call('ZADD', outcome == 'success' and ok or fail, unpack(members))
redis.call('ZREMRANGEBYSCORE', ok, '-inf', now - window_ms)
redis.call('ZREMRANGEBYSCORE', fail, '-inf', now - window_ms)
redis.call('PEXPIRE', ok, window_ms)
redis.call('PEXPIRE', fail, window_ms)
if state ~= 'closed' or outcome == 'success' then return {state, state} end
local fails = redis.call('ZCARD', fail)
local calls = fails + redis.call('ZCARD', ok)
if consecutive >= max_consecutive or (calls >= min_calls and fails / calls >= rate) then
  return {state, trip()}
end
return {state, state}
"""
)

ACQUIRE = Script(_ACQUIRE)
_RENEW_SCRIPT = Script(_RENEW)
RECORD = Script(_RECORD)

# KEYS: hash, ok window, fail window. ARGV: window ms. → {now, fields..., ok count, fail count}
_SNAPSHOT = (
    _NOW
    + """
local since = now - tonumber(ARGV[1])
return {now, redis.call('HGETALL', KEYS[1]),
        redis.call('ZCOUNT', KEYS[2], since, '+inf'), redis.call('ZCOUNT', KEYS[3], since, '+inf')}
"""
)
_SNAPSHOT_SCRIPT = Script(_SNAPSHOT)
SCRIPTS = (ACQUIRE, _RENEW_SCRIPT, RECORD, _SNAPSHOT_SCRIPT)
MOST_COUNTED = 1000
"""Calls one record may count (the script's ``unpack`` has a bounded stack)."""


class CircuitBreakers:
    """The breakers of all providers in one namespace."""

    def __init__(self, redis: Redis, keys: Keys, policy: BreakerPolicy | None = None) -> None:
        self.redis, self.keys = redis, keys
        self.policy = policy or BreakerPolicy()

    def _keys(self, provider: str) -> list[str]:
        key = self.keys.breaker(provider)
        return [key, f"{key}:ok", f"{key}:fail", f"{key}:calls"]

    @property
    def _lease_ms(self) -> int:
        return int(self.policy.probe_timeout_s * 1000)

    async def load_scripts(self) -> None:
        """Load the scripts now: the first call of each, in a pipeline, would pay a reload."""
        await load_all(self.redis, SCRIPTS)

    async def acquire(self, provider: str) -> Permit:
        """May ``provider`` be called now? A granted probe must be followed by ``record``
        (or :meth:`give_back` when it goes unused)."""
        key, args = self.keys.breaker(provider), self._acquire_args()
        return self.permit(provider, await ACQUIRE(self.redis, [key], args))

    def queue_acquire(self, pipe: Pipeline, provider: str) -> None:
        """Queue :meth:`acquire` (script :data:`ACQUIRE`, one reply read by :meth:`permit`)."""
        ACQUIRE.queue(pipe, [self.keys.breaker(provider)], self._acquire_args())

    def _acquire_args(self) -> list[Arg]:
        return [self._lease_ms, uuid.uuid4().hex]

    @staticmethod
    def permit(provider: str, reply: Any) -> Permit:
        """The reply of an acquire."""
        allowed, state, reason, wait_ms, token, *before = reply
        left = before and int(allowed) == 2 and before[0] == BreakerState.OPEN.value
        return Permit(
            provider=provider,
            allowed=int(allowed) > 0,
            state=BreakerState(state),
            token=int(token) if int(allowed) == 2 else None,
            reason=str(reason) or None,
            retry_at=time.time() + int(wait_ms) / 1000 if int(wait_ms) else None,
            transition=Transition(provider, BreakerState.OPEN, BreakerState(state))
            if left
            else None,
        )

    async def give_back(self, permit: Permit) -> None:
        """Free an unused probe's lease at once; if Redis cannot take it, it lapses after the
        probe timeout (logged, not raised: the caller's work goes on)."""
        if permit.token is None:
            return
        try:
            await self.record(permit.provider, Outcome.IGNORED, token=permit.token)
        except Exception as exc:
            log.warning("the unused probe of %s was not given back: %s", permit.provider, exc)

    async def renew(self, permit: Permit) -> bool:
        """Extend a probe's lease; ``False`` when it no longer holds it (or is no probe)."""
        if permit.token is None:
            return False
        held = await _RENEW_SCRIPT(
            self.redis, [self.keys.breaker(permit.provider)], [permit.token, self._lease_ms]
        )
        return bool(int(held))

    @contextlib.asynccontextmanager
    async def holding(self, permit: Permit) -> AsyncIterator[None]:
        """Renew a probe's lease every third of it while the body runs; no-op for others."""
        if permit.token is None:
            yield
            return
        done = asyncio.Event()
        keeper = asyncio.create_task(self._keep(permit, done), name=f"lease-{permit.provider}")
        try:
            yield
        finally:
            done.set()  # stops the keeper even if a Redis call swallows its cancellation
            keeper.cancel()

    async def _keep(self, permit: Permit, done: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.policy.probe_timeout_s / 3)
            if done.is_set():
                return
            try:
                if not await self.renew(permit):
                    log.warning("probe lease of %s was lost", permit.provider)
                    return
            except Exception:
                log.warning("could not renew the probe lease of %s", permit.provider)

    async def record(
        self, provider: str, outcome: Outcome, *, token: int | None = None, retry_after_s: float = 0
    ) -> Transition | None:
        """Record a call's outcome (``token``: its probe's); the state change it caused."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.queue_record(pipe, provider, outcome, token=token, retry_after_s=retry_after_s)
            [reply] = await execute(self.redis, pipe, [RECORD])
        return self.transition(provider, reply)

    def queue_record(
        self,
        pipe: Pipeline,
        provider: str,
        outcome: Outcome,
        *,
        token: int | None = None,
        retry_after_s: float = 0,
        count: int = 1,
    ) -> None:
        """Queue :meth:`record` (script :data:`RECORD`, its reply read by :meth:`transition`);
        ``count`` successes at once (none a probe's, at most :data:`MOST_COUNTED`)."""
        alike = token is None and outcome is Outcome.SUCCESS
        if not 1 <= count <= MOST_COUNTED or (count > 1 and not alike):
            raise ValueError(f"{count} calls of outcome {outcome} cannot be recorded at once")
        p = self.policy
        args: list[Arg] = [
            outcome.value,
            "" if token is None else token,
            int(min(retry_after_s, p.cooldown_cap_s) * 1000),
            int(p.window_s * 1000),
            p.failure_rate,
            p.min_calls,
            p.consecutive_failures,
            int(p.cooldown_s * 1000),
            int(p.cooldown_cap_s * 1000),
            uuid.uuid4().hex,
            CALLS_KEPT_MS,
            count,
        ]
        RECORD.queue(pipe, self._keys(provider), args)

    @staticmethod
    def transition(provider: str, reply: Any) -> Transition | None:
        """The state change a record's reply tells (raised if it is an error)."""
        if isinstance(reply, Exception):
            raise reply
        old, new = (str(state) for state in reply)
        if old == new:
            return None
        return Transition(provider, BreakerState(old), BreakerState(new))

    async def snapshot(self, provider: str) -> BreakerSnapshot:
        now, flat, ok, fail = await _SNAPSHOT_SCRIPT(
            self.redis, self._keys(provider), [int(self.policy.window_s * 1000)]
        )
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return _snapshot(fields, int(ok), int(fail), int(now))


def _snapshot(fields: dict[str, Any], ok: int, fail: int, now: int) -> BreakerSnapshot:
    def seconds(name: str) -> float | None:
        value = int(float(fields.get(name) or 0))
        return value / 1000 if value else None

    state = BreakerState(fields.get("state", "closed"))
    probe_at = seconds("open_until")
    if state is BreakerState.OPEN and (probe_at or 0) * 1000 <= now:
        state = BreakerState.HALF_OPEN  # cooled down: the next call probes (none may come)
    rate_limited = seconds("rl_until")
    return BreakerSnapshot(
        state=state,
        failures=fail,
        calls=ok + fail,
        consecutive_failures=int(fields.get("consecutive") or 0),
        trips=int(fields.get("trips") or 0),
        opened_at=seconds("opened_at") if state is not BreakerState.CLOSED else None,
        next_probe_at=probe_at if state is BreakerState.OPEN else None,
        rate_limited_until=rate_limited if rate_limited and rate_limited * 1000 > now else None,
    )

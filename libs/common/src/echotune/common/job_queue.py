"""The jobs stream and its consumer group: creation, backlog, trimming, workers alive.

The group is created at id ``0`` (``MKSTREAM``) by whoever comes first - gateway or worker -
so that a job published before any worker started is still delivered. After Redis lost its
data the group is gone (``NOGROUP``); both sides create it again and carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from echotune.common.keys import JOBS_GROUP, Keys
from echotune.common.redis import ensure_group as create_group
from echotune.common.scripts import Script

log = logging.getLogger(__name__)

# Trim below the oldest entry still needed: pending (delivered, not acknowledged) or not yet
# delivered (after the group's last-delivered id). Nothing a worker may still run is dropped.
_TRIM = Script("""
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local keep = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == ARGV[1] then
    keep = info['last-delivered-id']
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
    if pending[2] then keep = pending[2] end
  end
end
if not keep then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
""")

# Reset the idle time of the entries that consumer ARGV[2] still holds in group ARGV[1]
# (ARGV[3..]); return those pending with another consumer (reclaimed by another worker). One
# pending with nobody (acknowledged as a duplicate's, or lost with the stream's data) is not
# taken over: its run goes on, fenced by the request's fence if another worker took the job.
_REFRESH = Script("""
local taken = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  elseif p[1] then
    table.insert(taken, ARGV[i])
  end
end
return taken
""")

# Acknowledge entry ARGV[3] of group ARGV[1] only if consumer ARGV[2] still holds it.
_LET_GO = Script("""
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] and p[1][2] == ARGV[2] then return redis.call('XACK', KEYS[1], ARGV[1], ARGV[3]) end
return 0
""")

# Give entry ARGV[3] of group ARGV[1] to consumer ARGV[4] only if consumer ARGV[2] holds it.
_HAND_OVER = Script("""
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] and p[1][2] == ARGV[2] then
  return #redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], 0, ARGV[3], 'JUSTID')
end
return 0
""")

# KEYS[1]: sorted set consumer -> last heartbeat (Redis ms). ARGV: consumer, forget after ms.
_HEARTBEAT = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now
""")

_ALIVE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
""")


def is_missing_group(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and str(error).startswith("NOGROUP")


async def ensure_group(redis: Redis, keys: Keys) -> bool:
    """Create the jobs group at ``0`` if it does not exist; whether it was created now."""
    created = await create_group(redis, keys.jobs, JOBS_GROUP)
    if created:
        log.info("created the consumer group %s of %s at 0", JOBS_GROUP, keys.jobs)
    return created


def queue_backlog(pipe: Pipeline, keys: Keys) -> None:
    """Queue what :func:`backlog` reads (run the pipeline with ``raise_on_error=False``)."""
    pipe.xinfo_groups(keys.jobs)
    pipe.xlen(keys.jobs)


def backlog(groups: Any, length: Any) -> int | None:
    """Jobs not yet delivered to any worker; ``None`` when the group does not exist."""
    if isinstance(groups, Exception):
        return None
    for group in groups:
        if group["name"] == JOBS_GROUP:
            lag = group.get("lag")
            return int(lag) if lag is not None else int(length)
    return None


async def depth(redis: Redis, keys: Keys) -> tuple[int, int] | None:
    """(jobs not yet delivered, jobs delivered and not acknowledged); ``None`` without group."""
    async with redis.pipeline(transaction=False) as pipe:
        queue_backlog(pipe, keys)
        groups, length = await pipe.execute(raise_on_error=False)
    lag = backlog(groups, length)
    if lag is None:
        return None
    pending = next(int(g.get("pending") or 0) for g in groups if g["name"] == JOBS_GROUP)
    return lag, pending


async def trim(redis: Redis, keys: Keys) -> int:
    """Drop acknowledged jobs from the stream; how many were dropped."""
    return int(await _TRIM(redis, [keys.jobs], [JOBS_GROUP]))


async def refresh_held(redis: Redis, keys: Keys, consumer: str, entry_ids: list[str]) -> list[str]:
    """Keep ``consumer``'s entries from being reclaimed; the ids another consumer holds now."""
    if not entry_ids:
        return []
    taken = await _REFRESH(redis, [keys.jobs], [JOBS_GROUP, consumer, *entry_ids])
    return [str(entry_id) for entry_id in taken]


async def ack(redis: Redis, keys: Keys, entry_ids: Sequence[str]) -> int:
    """Acknowledge the jobs' entries ``entry_ids`` (one command); how many were pending."""
    return int(await redis.xack(keys.jobs, JOBS_GROUP, *entry_ids))


async def let_go(redis: Redis, keys: Keys, consumer: str, entry_id: str) -> bool:
    """Acknowledge ``consumer``'s entry unless another consumer holds it now; whether it did."""
    return bool(await _LET_GO(redis, [keys.jobs], [JOBS_GROUP, consumer, entry_id]))


async def hand_over(redis: Redis, keys: Keys, consumer: str, entry_id: str, to: str) -> bool:
    """Give ``consumer``'s entry to consumer ``to`` unless another holds it now; whether it did.

    Still pending, the entry is ``to``'s to refresh and acknowledge, or, should ``to`` die, any
    worker's to reclaim."""
    return bool(await _HAND_OVER(redis, [keys.jobs], [JOBS_GROUP, consumer, entry_id, to]))


async def heartbeat(redis: Redis, keys: Keys, consumer: str, forget_after_s: float) -> None:
    """Say that ``consumer`` (a worker) is alive."""
    await _HEARTBEAT(redis, [keys.workers_alive], [consumer, int(forget_after_s * 1000)])


async def workers_alive(redis: Redis, keys: Keys, within_s: float) -> int:
    """Workers that said they were alive in the last ``within_s`` seconds (Redis' clock)."""
    return int(await _ALIVE(redis, [keys.workers_alive], [int(within_s * 1000)]))

"""Chat limits: starts per user and per IP, open streams per user.

Each check is one single-key script timed by Redis' own clock. They are queued into the
pipeline of the chat service's first round trip; a start refused for one reason is taken
back from the others, so it costs nothing. A start is counted under its call's own id (the
open-stream key), not its request id: a check sent again after a lost reply finds its own
count, and twins (one request id, two calls) count apart, so the one whose answer did not
start takes back only its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from echotune.common.keys import Keys
from echotune.common.scripts import Arg, Script, execute
from echotune.web.errors import ApiError

WINDOW_S = 60
WHO = {"user": "this user", "ip": "this address"}
ADMITTED = 0

# Sliding-window log: at most ARGV[1] starts in any ARGV[2] ms. KEYS[1]: sorted set of one
# subject's starts. ARGV[3]: the call's id (the same call sent again finds itself counted).
# Returns 0 (admitted), else the ms until a slot frees.
ADMIT_START = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 0 end
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(tonumber(oldest[2]) + window - now, 1)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
""")

# KEYS[1]: sorted set of a user's open responses scored by when they lapse (Redis ms).
# ARGV: cap (0: refresh only, never admit), lapse ms, then stream keys (one to admit).
# Returns 1 or 0.
OPEN_STREAMS = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap, lapse = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- a retried admission (its reply was lost) finds its stream in: admitted, not counted twice
if cap > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[3])
   and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], cap > 0 and 'NX' or 'XX', now + lapse, ARGV[i])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
if last then redis.call('PEXPIREAT', KEYS[1], last) end  -- as long as its latest member
return 1
""")


@dataclass(slots=True)
class Admission:
    """What the start checks said, and what to take back if the start does not happen."""

    refusal: ApiError | None = None
    taken: list[tuple[str, str]] = field(default_factory=list)
    """(key, member) counted by this call."""


class ChatLimits:
    """Exact sliding-window limits on chat starts, and a cap on a user's open streams."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        per_user: int,
        per_ip: int,
        open_streams: int,
        lapse_s: float,
    ) -> None:
        self.redis, self.keys = redis, keys
        self.per_user, self.per_ip = per_user, per_ip
        self.open_streams, self.lapse_ms = open_streams, int(lapse_s * 1000)

    def _subjects(self, user_id: str, ip: str) -> list[tuple[str, int, str]]:
        return [
            (self.keys.rate_limit("user", user_id), self.per_user, "user"),
            (self.keys.rate_limit("ip", ip), self.per_ip, "ip"),
        ]

    def start_members(self, user_id: str, ip: str, call_id: str) -> list[tuple[str, str]]:
        """(key, member) of every count a start check of ``call_id`` may have made."""
        return [(key, call_id) for key, _, _ in self._subjects(user_id, ip)]

    def queue_start(self, pipe: Pipeline, user_id: str, ip: str, call_id: str) -> None:
        """Queue the start checks (two replies, read by :meth:`start_admission`)."""
        for key, limit, _ in self._subjects(user_id, ip):
            ADMIT_START.queue(pipe, [key], [limit, WINDOW_S * 1000, call_id])

    def start_admission(
        self, replies: Sequence[Any], user_id: str, ip: str, call_id: str
    ) -> Admission:
        subjects = self._subjects(user_id, ip)
        waits = [int(r) for r in replies]
        taken = [(s[0], call_id) for s, w in zip(subjects, waits, strict=True) if w == ADMITTED]
        refused = [(w, s[2]) for s, w in zip(subjects, waits, strict=True) if w > 0]
        if not refused:
            return Admission(taken=taken)
        wait_ms, scope = max(refused)
        error = ApiError(
            429,
            "rate_limited",
            f"too many chats started by {WHO[scope]}; try again later",
            details={"scope": scope},
            headers={"Retry-After": str(math.ceil(wait_ms / 1000))},
        )
        return Admission(error, taken)

    def queue_open_stream(self, pipe: Pipeline, user_id: str, stream_key: str) -> None:
        """Queue the admission of one more open response of ``user_id`` (one reply)."""
        args: list[Arg] = [self.open_streams, self.lapse_ms, stream_key]
        OPEN_STREAMS.queue(pipe, [self.keys.open_streams(user_id)], args)

    def open_stream_refusal(self, reply: Any) -> ApiError | None:
        if int(reply) == 1:
            return None
        return ApiError(
            429,
            "too_many_streams",
            f"at most {self.open_streams} open streams per user; close one first",
            headers={"Retry-After": "5"},
        )

    async def take_back(self, taken: Sequence[tuple[str, str]]) -> None:
        """Forget counted starts or open streams that did not happen or have ended."""
        if not taken:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, member in taken:
                pipe.zrem(key, member)
            replies = await execute(self.redis, pipe, [])
        if failed := [reply for reply in replies if isinstance(reply, Exception)]:
            raise failed[0]

    async def refresh(self, streams: dict[str, list[str]]) -> None:
        """Keep this process's open streams (user id -> stream keys) from lapsing."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, stream_keys in streams.items():
                args: list[Arg] = [0, self.lapse_ms, *stream_keys]
                OPEN_STREAMS.queue(pipe, [self.keys.open_streams(user_id)], args)
            await execute(self.redis, pipe, [OPEN_STREAMS] * len(streams))

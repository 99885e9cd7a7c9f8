"""Chat limits: starts per user and per IP, open streams per user."""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.gateway.errors import ApiError

WINDOW_S = 60

# Sliding-window log: at most ARGV[1] members in any ARGV[2] ms, timed by Redis' own clock.
# KEYS[1]: sorted set of one subject's starts. ARGV[3]: the start (a request id; a retried
# call finds it already counted). Returns 0 when admitted, else the ms until a slot frees.
_ADMIT = """
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
"""


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
        self.per_user, self.per_ip, self.open_streams, self.lapse_s = (
            per_user,
            per_ip,
            open_streams,
            lapse_s,
        )
        self._admit = redis.register_script(_ADMIT)

    async def check_start(self, user_id: str, ip: str, request_id: str) -> None:
        """Count a chat start; 429 with ``Retry-After`` when the user or IP is over its limit.

        Each subject is one single-key script (cluster-safe); both run in one round trip. A
        start refused by one subject is taken back from the other, so it costs nothing.
        """
        subjects = [
            (self.keys.rate_limit("user", user_id), self.per_user, "this user"),
            (self.keys.rate_limit("ip", ip), self.per_ip, "this address"),
        ]
        window_ms = WINDOW_S * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, limit, _ in subjects:
                await self._admit(keys=[key], args=[limit, window_ms, request_id], client=pipe)
            waits = [int(w) for w in await pipe.execute()]
        if not any(waits):
            return
        for (key, _, _), wait in zip(subjects, waits, strict=True):
            if not wait:
                await self.redis.zrem(key, request_id)
        wait_ms, who = max((w, s[2]) for w, s in zip(waits, subjects, strict=True))
        raise ApiError(
            429,
            "rate_limited",
            f"too many chats started by {who}; try again later",
            headers={"Retry-After": str(math.ceil(wait_ms / 1000))},
        )

    async def open_stream(self, user_id: str, stream_key: str) -> None:
        """Register an open stream of ``user_id``; 429 when the user already has too many."""
        key, now = self.keys.open_streams(user_id), time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {stream_key: now + self.lapse_s})
            pipe.zcard(key)
            pipe.expire(key, int(self.lapse_s) + 60)
            _, _, count, _ = await pipe.execute()
        if count > self.open_streams:
            await self.redis.zrem(key, stream_key)
            raise ApiError(
                429,
                "too_many_streams",
                f"at most {self.open_streams} open streams per user; close one first",
                headers={"Retry-After": "5"},
            )

    async def refresh(self, streams: list[tuple[str, str]]) -> None:
        """Keep the open streams (user, stream key) of this process from lapsing."""
        lapse = time.time() + self.lapse_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, stream_key in streams:
                pipe.zadd(self.keys.open_streams(user_id), {stream_key: lapse}, xx=True)
            await pipe.execute()

    async def close_stream(self, user_id: str, stream_key: str) -> None:
        await self.redis.zrem(self.keys.open_streams(user_id), stream_key)

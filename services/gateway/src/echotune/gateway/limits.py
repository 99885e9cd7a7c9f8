"""Chat limits: starts per user and per IP, open streams per user."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.gateway.errors import ApiError

WINDOW_S = 60


class ChatLimits:
    """Fixed-window rate limits on chat starts, and a cap on a user's open streams."""

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

    async def check_start(self, user_id: str, ip: str) -> None:
        """Count a chat start; 429 with ``Retry-After`` when the user or IP is over its limit."""
        window = int(time.time() // WINDOW_S)
        user_key = self.keys.rate_limit("user", user_id, window)
        ip_key = self.keys.rate_limit("ip", ip, window)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(user_key)
            pipe.expire(user_key, WINDOW_S * 2)
            pipe.incr(ip_key)
            pipe.expire(ip_key, WINDOW_S * 2)
            by_user, _, by_ip, _ = await pipe.execute()
        if by_user > self.per_user or by_ip > self.per_ip:
            retry_after = str(int((window + 1) * WINDOW_S - time.time()) + 1)
            who = "this user" if by_user > self.per_user else "this address"
            raise ApiError(
                429,
                "rate_limited",
                f"too many chats started by {who}; try again later",
                headers={"Retry-After": retry_after},
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

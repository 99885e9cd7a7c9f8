"""Per-provider figures of the last minutes, kept in Redis by the workers.

Provider health must work when analytics or MongoDB is down, so workers count every
attempt in one hash per provider and minute (expiring after ``RETENTION_MIN``), with
latency and time-to-first-token histograms in the layout of ``echotune.common.histogram``.

The counts are at least once: a round trip that redis-py sends again after a lost reply
counts its attempt twice (telemetry's figures are the exact ones: it deduplicates by event).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from echotune.common import histogram
from echotune.common.keys import Keys

RETENTION_MIN = 10


@dataclass(frozen=True, slots=True)
class LiveFigures:
    requests: int
    successes: int
    rate_limited: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.requests if self.requests else None

    @property
    def rate_limited_rate(self) -> float | None:
        return self.rate_limited / self.requests if self.requests else None


def _minute(now: float | None = None) -> int:
    return int((now or time.time()) // 60)


Counts = Counter[tuple[int, str]]
"""Counts of attempts by (minute, hash field)."""


def attempt_counts(
    *, success: bool, rate_limited: bool, latency_ms: float, ttft_ms: float | None
) -> Counts:
    """What one attempt adds to its provider's figures, in the current minute."""
    minute = _minute()
    names = ["requests", f"lat:{histogram.bucket_of(latency_ms)}"]
    if success:
        names.append("successes")
    if rate_limited:
        names.append("rate_limited")
    if ttft_ms is not None:
        names.append(f"ttft:{histogram.bucket_of(ttft_ms)}")
    return Counter((minute, name) for name in names)


class LiveStats:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys

    def queue_counts(self, pipe: Pipeline, provider: str, counts: Counts) -> None:
        """Queue ``counts`` (of :func:`attempt_counts`, summed) into ``pipe``."""
        for (minute, name), count in counts.items():
            pipe.hincrby(self.keys.live_stats(provider, minute), name, count)
        for minute in {minute for minute, _ in counts}:
            pipe.expire(self.keys.live_stats(provider, minute), RETENTION_MIN * 60)

    async def window(self, provider: str, minutes: int = 5) -> LiveFigures:
        """Figures of the last ``minutes`` minutes (the current one included)."""
        now = _minute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in range(now - minutes + 1, now + 1):
                pipe.hgetall(self.keys.live_stats(provider, minute))
            hashes: list[dict[str, str]] = await pipe.execute()
        counts = {"requests": 0, "successes": 0, "rate_limited": 0}
        latency: dict[int, int] = {}
        ttft: dict[int, int] = {}
        for fields in hashes:
            for name, value in fields.items():
                kind, _, bucket = name.partition(":")
                if name in counts:
                    counts[name] += int(value)
                elif kind in ("lat", "ttft"):
                    target = latency if kind == "lat" else ttft
                    target[int(bucket)] = target.get(int(bucket), 0) + int(value)
        return LiveFigures(
            requests=counts["requests"],
            successes=counts["successes"],
            rate_limited=counts["rate_limited"],
            latency_p50_ms=histogram.quantile(latency, 0.5),
            latency_p95_ms=histogram.quantile(latency, 0.95),
            ttft_p50_ms=histogram.quantile(ttft, 0.5),
            ttft_p95_ms=histogram.quantile(ttft, 0.95),
        )

"""Every Redis key family echotune writes, with its bound, and a census of a namespace.

A key that matches no family fails the soak test: a new key family must say here how its
memory is bounded. The bounds restate the code's (``libs/common/.../keys.py`` names them);
``per_request`` families must all be gone once the TTLs after the last request have passed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio import Redis


@dataclass(frozen=True)
class Family:
    pattern: str
    regex: str
    bound: str
    per_request: bool = False


FAMILIES = [
    Family(
        "req:{id}:events",
        r"req:\{[^}]+\}:events",
        "≤ EVENTS_MAXLEN entries; TTL MAX_STREAM_S+RESUME_WINDOW_S+KEY_GRACE_S, "
        "RESUME_WINDOW_S+KEY_GRACE_S after the final event",
        per_request=True,
    ),
    Family(
        "req:{id}:meta", r"req:\{[^}]+\}:meta", "same TTLs as its events stream", per_request=True
    ),
    Family("req:{id}:reader", r"req:\{[^}]+\}:reader", "TTL RESUME_WINDOW_S", per_request=True),
    Family(
        "req:{id}:relayed",
        r"req:\{[^}]+\}:relayed",
        "TTL 10 s (a relay's barrier)",
        per_request=True,
    ),
    Family(
        "req:{id}:cancel",
        r"req:\{[^}]+\}:cancel",
        "TTL MAX_STREAM_S+RESUME_WINDOW_S+KEY_GRACE_S",
        per_request=True,
    ),
    Family(
        "rate:{scope}:{subject}",
        r"rate:(user|ip):.+",
        "≤ CHAT_STARTS_PER_MINUTE_* members; TTL 60 s after the last start",
        per_request=True,
    ),
    Family(
        "open-streams:{user}",
        r"open-streams:.+",
        "≤ MAX_OPEN_STREAMS_PER_USER members; TTL 2·RESUME_WINDOW_S (its last member's lapse)",
        per_request=True,
    ),
    Family(
        "profile:{user}:{tz}",
        r"profile:\{[^}]+\}:[^:]+",
        "one string per user and time zone asking; TTL PROFILE_CACHE_S",
        per_request=True,
    ),
    Family("breaker:{provider}", r"breaker:\{[^}]+\}", "one hash per configured provider"),
    Family(
        "breaker:{provider}:ok|fail",
        r"breaker:\{[^}]+\}:(ok|fail)",
        "calls of the last WINDOW_S (pruned on every record); TTL WINDOW_S",
    ),
    Family(
        "breaker:{provider}:calls",
        r"breaker:\{[^}]+\}:calls",
        "ids of the last minute's records (pruned on every record); TTL 60 s",
    ),
    Family(
        "live:{provider}:{minute}",
        r"live:[^:]+:\d+",
        "one hash of ≤ ~60 fields per provider and minute; TTL 10 min",
    ),
    Family(
        "jobs",
        r"jobs",
        "trimmed every JOBS_TRIM_S below the oldest pending or undelivered entry (job_queue.trim)",
    ),
    Family("workers", r"workers", "one sorted set; a member per worker seen in the last 60 s"),
    Family("telemetry", r"telemetry", "≈ TELEMETRY_MAXLEN entries (approximate MAXLEN)"),
    Family("telemetry:dlq{…}", r"telemetry:dlq\{[^}]+\}", "≈ TELEMETRY_DLQ_MAXLEN entries"),
    Family("api-keys", r"api-keys", "one hash; a field per API key created"),
    Family("provider-selection", r"provider-selection", "one hash; a field per user who chose"),
    Family(
        "sessions:{key id}",
        r"sessions:\{[^}]+\}",
        "≤ 100 sessions per API key; TTL SESSION_TTL_S after the last login",
    ),
    Family(
        "gateway:{id}:wakeup",
        r"gateway:[^:]+:wakeup",
        "≈ 16 entries per gateway process; TTL 1 h after its last wake-up",
    ),
]


def family_of(namespace: str, key: str) -> Family | None:
    name = key.removeprefix(f"{namespace}:")
    return next((f for f in FAMILIES if re.fullmatch(f.regex, name)), None)


@dataclass
class Census:
    """Keys (and, when measured, bytes) of each family in a namespace at one moment."""

    used_memory: int
    keys: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    lengths: dict[str, int] = field(default_factory=dict)
    """XLEN of the namespace's unique streams (``jobs``, ``telemetry``)."""

    @property
    def total_keys(self) -> int:
        return sum(self.keys.values()) + len(self.unknown)

    def per_request_keys(self, *, but: str = "") -> int:
        """Keys of per-request families (but the family ``but``)."""
        return sum(n for name, n in self.keys.items() if _family(name).per_request and name != but)


def _family(pattern: str) -> Family:
    return next(f for f in FAMILIES if f.pattern == pattern)


async def take_census(redis: Redis, namespace: str, *, measure: bool = False) -> Census:
    """Count (``measure``: and size, with ``MEMORY USAGE``) every key of ``namespace``."""
    info = await redis.info("memory")
    census = Census(used_memory=int(info["used_memory"]))
    keys = [key async for key in redis.scan_iter(match=f"{namespace}:*", count=1000)]
    sizes = await _sizes(redis, keys) if measure else [0] * len(keys)
    for key, size in zip(keys, sizes, strict=True):
        family = family_of(namespace, key)
        if family is None:
            census.unknown.append(key)
            continue
        census.keys[family.pattern] = census.keys.get(family.pattern, 0) + 1
        census.bytes[family.pattern] = census.bytes.get(family.pattern, 0) + size
    for stream in ("jobs", "telemetry"):
        census.lengths[stream] = int(await redis.xlen(f"{namespace}:{stream}"))
    return census


async def _sizes(redis: Redis, keys: list[str]) -> list[int]:
    sizes: list[int] = []
    for start in range(0, len(keys), 500):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys[start : start + 500]:
                pipe.memory_usage(key, samples=0)
            sizes += [int(size or 0) for size in await pipe.execute()]
    return sizes


def table(columns: Iterable[tuple[str, Census]]) -> str:
    """One row per key family: keys (and KiB where measured) in each census, then the bound."""
    columns = list(columns)
    head = "| family | " + " | ".join(name for name, _ in columns) + " | bound |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for family in FAMILIES:
        cells = []
        for _, census in columns:
            count = census.keys.get(family.pattern, 0)
            size = census.bytes.get(family.pattern)
            cells.append(f"{count}" + (f" ({size / 1024:.0f} KiB)" if size else ""))
        lines.append(f"| {family.pattern} | " + " | ".join(cells) + f" | {family.bound} |")
    totals = " | ".join(f"{c.total_keys} keys, {c.used_memory / 2**20:.2f} MiB" for _, c in columns)
    lines.append(f"| **all** (used_memory) | {totals} | |")
    return "\n".join(lines)

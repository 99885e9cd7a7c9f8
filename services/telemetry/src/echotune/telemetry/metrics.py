"""Prometheus metrics of the telemetry writer, and the ``/metrics`` route that serves them.

Counters and histograms are updated as batches are written; the stream gauges (length,
pending, lag, backlog age) are read from Redis at each scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from faststream.asgi import AsgiResponse, get
from faststream.asgi.handlers import GetHandler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from echotune.common.redis import PROBE_TIMEOUT_S
from echotune.telemetry.decode import DEAD_LETTER_KINDS

PREFIX = "echotune_telemetry"
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def entry_ms(entry_id: str) -> int:
    """Milliseconds timestamp of a stream entry id."""
    return int(entry_id.split("-", 1)[0])


class Metrics:
    """Every metric of one process, in its own registry."""

    def __init__(self, stream: str, group: str, dead_letters: str) -> None:
        self.stream, self.group, self.dead_letters_stream = stream, group, dead_letters
        self.redis: Redis | None = None
        self.registry = r = CollectorRegistry()
        self.events_written = Counter(
            f"{PREFIX}_events_written", "Attempt documents inserted", registry=r
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicates_skipped", "Events already stored, skipped", registry=r
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters", "Events sent to the DLQ", ["kind"], registry=r
        )
        for kind in DEAD_LETTER_KINDS:  # each series exists from 0: a first letter is a rise
            self.dead_letters.labels(kind)
        self.reclaimed = Counter(
            f"{PREFIX}_reclaimed_entries", "Entries reclaimed from idle consumers", registry=r
        )
        self.recovered = Counter(
            f"{PREFIX}_rollups_recovered",
            "Documents of interrupted deliveries whose rollups were completed",
            registry=r,
        )
        self.write_failures = Counter(
            f"{PREFIX}_write_failures", "Failed MongoDB write attempts (retried)", registry=r
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Entries per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.write_seconds = Histogram(
            f"{PREFIX}_write_seconds", "Accepted MongoDB write of one batch", registry=r
        )
        self.stream_length = Gauge(f"{PREFIX}_stream_length", "XLEN of the stream", registry=r)
        self.pending = Gauge(
            f"{PREFIX}_pending", "Entries delivered to the group, not yet acked", registry=r
        )
        self.lag = Gauge(
            f"{PREFIX}_lag", "Entries not yet delivered to the group (-1: unknown)", registry=r
        )
        self.backlog_age = Gauge(
            f"{PREFIX}_backlog_age_seconds",
            "Age of the oldest entry not yet acknowledged (0 when none)",
            registry=r,
        )
        self.dlq_length = Gauge(f"{PREFIX}_dlq_length", "XLEN of the DLQ stream", registry=r)
        self.mongo_up = Gauge(
            f"{PREFIX}_mongodb_up", "1 while the last write attempt succeeded", registry=r
        )

    async def refresh(self) -> None:
        """Read the stream gauges from Redis (left as they were if Redis does not answer)."""
        if self.redis is None:
            return
        with contextlib.suppress(RedisError, OSError):  # TimeoutError is an OSError
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self._refresh(self.redis)

    async def _refresh(self, redis: Redis) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.stream)
            pipe.xlen(self.dead_letters_stream)
            pipe.xinfo_groups(self.stream)
            pipe.xpending(self.stream, self.group)
            length, dlq_length, groups, pending = await pipe.execute(raise_on_error=False)
        self.stream_length.set(length if isinstance(length, int) else 0)
        self.dlq_length.set(dlq_length if isinstance(dlq_length, int) else 0)
        group: dict[str, Any] = (
            next((g for g in groups if g["name"] == self.group), {})
            if isinstance(groups, list)
            else {}
        )
        self.pending.set(group.get("pending") or 0)
        lag = group.get("lag")
        self.lag.set(-1 if lag is None else lag)
        oldest: list[int] = []
        if isinstance(pending, dict) and pending.get("min"):
            oldest.append(entry_ms(str(pending["min"])))
        if lag and group.get("last-delivered-id"):
            # Entries hold binary FastStream envelopes: read the next one undecoded.
            execute = cast(Callable[..., Awaitable[Any]], redis.execute_command)
            start = f"({group['last-delivered-id']}"
            after = await execute("XRANGE", self.stream, start, "+", "COUNT", 1, NEVER_DECODE=True)
            oldest += [entry_ms(after[0][0].decode())] if after else []
        self.backlog_age.set(max(0.0, time.time() - min(oldest) / 1000) if oldest else 0)

    async def render(self) -> bytes:
        """The Prometheus text exposition, stream gauges refreshed."""
        await self.refresh()
        return generate_latest(self.registry)

    def route(self) -> GetHandler:
        """The ``GET /metrics`` ASGI handler."""

        @get(description="Prometheus metrics of the telemetry writer")
        async def metrics(scope: Any) -> AsgiResponse:
            body = await self.render()
            return AsgiResponse(body, 200, {"Content-Type": CONTENT_TYPE_LATEST})

        return metrics

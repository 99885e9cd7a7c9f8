"""Per-attempt measurements and their fire-and-forget publication."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from faststream.redis import RedisBroker, RedisClusterBroker
from redis.asyncio import Redis

from echotune.common.messages import (
    BreakerState,
    ChatJob,
    Confidence,
    Grounding,
    TelemetryEvent,
)
from echotune.common.scripts import Arg, Script
from echotune.common.stream_entry import entry_fields
from echotune.worker.writer import redis_away

log = logging.getLogger(__name__)
BATCH_WAIT_S = 0.05
"""An event waits this long for others to share its round trip (nobody waits for it)."""
PAUSE_S = 0.25
"""The first pause after a failed batch; it doubles up to 4 s."""
MAX_BATCH = 256
"""Events sent in one round trip at most (a backlog after an outage goes in several)."""
PUBLISH_FOR_S = 60.0
"""How long an event is offered to Redis before it is given up: longer than a Redis Cluster
failover (node timeout + election). A retry may publish it twice; the writer stores it once."""


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0.01–0.99) of ``values`` by linear interpolation; ``None`` if
    empty."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    # statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1], without
    # the 98 other cut points it computes (1 % of a worker's CPU at 100 streams)
    data = sorted(values)
    j, delta = divmod(round(q * 100) * (len(data) - 1), 100)
    return (data[j] * (100 - delta) + data[j + 1] * delta) / 100


@dataclass(slots=True)
class AttemptClock:
    """Times one provider attempt: start, first token, gaps between tokens."""

    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    gaps_ms: list[float] = field(default_factory=list)
    tokens: int = 0

    def token(self) -> None:
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
        elif self.last_token is not None:
            self.gaps_ms.append((now - self.last_token) * 1000)
        self.last_token = now
        self.tokens += 1

    def event(
        self,
        job: ChatJob,
        *,
        attempt: int,
        provider: str,
        model: str,
        success: bool,
        error_code: str | None,
        tokens_in: int,
        tokens_out: int | None = None,
        breaker_state: BreakerState = BreakerState.CLOSED,
        is_retry: bool = False,
        is_failover: bool = False,
        grounding: Grounding | None = None,
        confidence: Confidence | None = None,
    ) -> TelemetryEvent:
        ended = time.monotonic()
        out = self.tokens if tokens_out is None else tokens_out
        streaming_s = ended - self.first_token if self.first_token is not None else 0.0
        return TelemetryEvent(
            request_id=job.request_id,
            attempt=attempt,
            provider=provider,
            model=model,
            latency_ms=(ended - self.started) * 1000,
            ttft_ms=None if self.first_token is None else (self.first_token - self.started) * 1000,
            gap_p50_ms=percentile(self.gaps_ms, 0.5),
            gap_p95_ms=percentile(self.gaps_ms, 0.95),
            tokens_in=tokens_in,
            tokens_out=out,
            tokens_per_s=out / streaming_s if streaming_s > 0 else None,
            success=success,
            error_code=error_code,
            breaker_state=breaker_state,
            is_retry=is_retry,
            is_failover=is_failover,
            user_id=job.user_id,
            conversation_id=job.conversation_id,
            grounding=grounding,
            confidence=confidence,
        )


Queued = tuple[TelemetryEvent, float]
"""An event and the time it is given up."""

# KEYS: the stream. ARGV: maxlen, then per entry its field count (names and values) and them.
# Per entry its id or its error reply: a refused entry does not refuse the others.
_PUBLISH = Script("""
local out, a = {}, 2
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  out[#out + 1] = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                              unpack(ARGV, a + 1, a + n))
  a = a + n + 1
end
return out
""")


class TelemetryPublisher:
    """Publishes telemetry in the background, the events of ``BATCH_WAIT_S`` in one round trip:
    a slow or failing Redis never slows a stream, and a busy worker pays one round trip per
    batch, not per event.

    With ``wait_replicas``, a batch counts once that many replicas hold it (``WAIT`` on the
    same connection): the cluster chaos run lost an attempt's document when a primary was
    killed before its replica held the event. A batch whose wait fails is sent again (the
    telemetry writer stores an event once); one too few replicas hold (too few online, or
    past ``wait_max_ms``) counts anyway."""

    def __init__(
        self,
        broker: RedisBroker,
        redis: Redis,
        stream: str,
        maxlen: int,
        *,
        wait_replicas: int = 0,
        wait_ms: int = 500,
        wait_max_ms: int = 3000,
        on_unreplicated: Callable[[], None] | None = None,
    ) -> None:
        self._redis, self._stream, self._maxlen = redis, stream, maxlen
        self._broker = _formatting(broker)
        self._wait_replicas, self._wait_ms, self._wait_max_ms = wait_replicas, wait_ms, wait_max_ms
        self._on_unreplicated = on_unreplicated
        self._queued: list[Queued] = []
        self._task: asyncio.Task[None] | None = None
        self._sending = 0  # events of the batch in flight

    def publish(self, event: TelemetryEvent) -> None:
        self._queued.append((event, time.monotonic() + PUBLISH_FOR_S))
        self._start()

    def _start(self) -> None:
        """Run the sender unless it runs; in a context of its own (not the attempt's that
        happened to start it: its request id and span would mark every later batch)."""
        if self._queued and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), context=contextvars.Context())

    async def _run(self) -> None:
        """Send what was queued meanwhile, every ``BATCH_WAIT_S``, until nothing is; what
        failed again after a growing pause (each event until its time is up)."""
        wait, pause = BATCH_WAIT_S, PAUSE_S
        while True:
            await asyncio.sleep(wait)
            if not self._queued:
                return
            batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
            self._sending = len(batch)
            try:
                failed = await self._send(batch)
            except Exception as exc:  # the round as a whole: Redis away
                failed = [(queued, exc) for queued in batch]
            finally:
                self._sending = 0
            if not failed:
                wait, pause = BATCH_WAIT_S, PAUSE_S
                continue
            self._queued = self._keep(failed, time.monotonic() + pause) + self._queued
            wait, pause = pause, min(pause * 2, 4.0)

    async def _send(self, batch: list[Queued]) -> list[tuple[Queued, Exception]]:
        """One script call adding the events' entries, as FastStream's publish writes them;
        the events to send again."""
        args: list[Arg] = [self._maxlen]
        for event, _ in batch:
            fields = await entry_fields(self._broker, event.model_dump(mode="json", by_alias=True))
            args += [2 * len(fields), *chain.from_iterable(fields.items())]
        replies = await self._publish(args)
        failed: list[tuple[Queued, Exception]] = []
        for queued, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception) and redis_away(reply):  # OOM, BUSY…
                failed.append((queued, reply))
            elif isinstance(reply, Exception):  # a damaged key: sending again cannot help
                log.error("telemetry event %s not published: %s", queued[0].event_id, reply)
        return failed

    async def _publish(self, args: list[Arg]) -> list[Any]:
        """The script's replies, once ``wait_replicas`` replicas hold its entries (or fewer
        are online)."""
        keys = [self._stream]
        if not self._wait_replicas:
            return list(await _PUBLISH(self._redis, keys, args))
        wanted, wait_ms, max_ms = self._wait_replicas, self._wait_ms, self._wait_max_ms
        replies, acked = await _PUBLISH.replicated(self._redis, keys, args, wanted, wait_ms, max_ms)
        if acked < wanted:
            log.warning("telemetry published before %d replicas held it", wanted)
            if self._on_unreplicated is not None:
                self._on_unreplicated()
        return list(replies)

    def _keep(self, failed: list[tuple[Queued, Exception]], retry_at: float) -> list[Queued]:
        """The failed events still worth sending at ``retry_at``."""
        kept = []
        for (event, until), error in failed:
            if until > retry_at:
                kept.append((event, until))
            else:
                log.error("telemetry event %s not published: %r", event.event_id, error)
        if kept:
            log.warning("%d telemetry events not published yet: %s", len(kept), failed[0][1])
        return kept

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait for events still being published (at shutdown), ``timeout_s`` at most."""
        self._start()  # one queued as an earlier flush cancelled the sender
        if self._task is None or self._task.done():
            return
        _, late = await asyncio.wait({self._task}, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            unsent = len(self._queued) + self._sending
            log.error("%d telemetry events not published before shutdown", unsent)


def _formatting(broker: RedisBroker) -> RedisBroker:
    """A broker whose publish can be captured (``entry_fields``): a cluster's ignores a
    pipeline, so one never connected, with its middlewares and message format, stands in."""
    if not isinstance(broker, RedisClusterBroker):
        return broker
    stand_in = RedisBroker(middlewares=broker.middlewares)
    if stand_in.message_format is not broker.message_format:
        raise TypeError(f"telemetry cannot format entries as {broker.message_format!r}")
    return stand_in

"""Per-attempt measurements and their fire-and-forget publication."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from faststream.redis import RedisBroker

from echotune.common.messages import (
    BreakerState,
    ChatJob,
    Confidence,
    Grounding,
    TelemetryEvent,
)

log = logging.getLogger(__name__)
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


class TelemetryPublisher:
    """Publishes telemetry in the background: a slow or failing Redis never slows a stream."""

    def __init__(self, broker: RedisBroker, stream: str, maxlen: int) -> None:
        self._broker, self._stream, self._maxlen = broker, stream, maxlen
        self._pending: set[asyncio.Task[None]] = set()

    def publish(self, event: TelemetryEvent) -> None:
        task = asyncio.create_task(self._send(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, event: TelemetryEvent) -> None:
        body = event.model_dump(mode="json", by_alias=True)
        give_up_at, pause = time.monotonic() + PUBLISH_FOR_S, 0.25
        while True:
            try:
                await self._broker.publish(body, stream=self._stream, maxlen=self._maxlen)
                return
            except Exception as exc:
                if time.monotonic() + pause > give_up_at:
                    log.exception("telemetry event %s not published", event.event_id)
                    return
                log.warning("telemetry event %s not published yet: %s", event.event_id, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 4.0)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait for events still being published (at shutdown), ``timeout_s`` at most."""
        if self._pending:
            _, late = await asyncio.wait(self._pending, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                log.error("%d telemetry events not published before shutdown", len(late))

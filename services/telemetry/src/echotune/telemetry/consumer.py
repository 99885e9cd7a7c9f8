"""Handling one delivered batch: decode, write until MongoDB accepts it, dead-letter, ack.

A batch is acknowledged only once MongoDB accepted it. While MongoDB is down or slow the
handler backs off (bounded exponential, with jitter) and keeps retrying, so the events stay
pending in the consumer group and no new ones are read; meanwhile it keeps re-claiming its
own entries so that no other process mistakes it for a crashed consumer. Dead letters are
written in the same script as the ack, each only while its entry is pending: a crash cannot
lose one, nor can a call sent again after a lost reply write one twice.

An entry that keeps failing for another reason than MongoDB (a bug, a crash it causes) is
redelivered by the reclaimer each ``claim_idle_ms``; past ``max_deliveries`` it is
dead-lettered instead of blocking forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from echotune.common.keys import TELEMETRY_GROUP, Keys
from echotune.common.messages import TelemetryEvent
from echotune.common.mongo import backoff_s
from echotune.common.scripts import Arg, Script
from echotune.telemetry.decode import DeadLetter, decode_batch, payload_text
from echotune.telemetry.metrics import Metrics
from echotune.telemetry.rollups import RollupClashError
from echotune.telemetry.settings import TelemetrySettings
from echotune.telemetry.writer import TelemetryWriter, WriteResult

log = logging.getLogger(__name__)

# KEYS: telemetry stream, dead letters. ARGV: group, dead letters' MAXLEN, count, then per
# letter its entry id and 6 field pairs, then the ids to acknowledge. A letter is written only
# while its entry is pending: a call sent again after a lost reply writes none twice.
_DEAD_LETTER_AND_ACK = Script("""
local group, n, a = ARGV[1], tonumber(ARGV[3]), 4
for _ = 1, n do
  local entry = ARGV[a]
  if #redis.call('XPENDING', KEYS[1], group, entry, entry, 1) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, a + 1, a + 12))
  end
  a = a + 13
end
for first = a, #ARGV, 1000 do  -- unpack takes at most ~8,000 values
  redis.call('XACK', KEYS[1], group, unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
return n
""")


def _safe(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def reclaimer_of(consumer: str) -> str:
    """The consumer name under which ``consumer``'s process reclaims idle entries."""
    return f"{consumer}:reclaim"


class BatchConsumer:
    """Writes the batches delivered by the main subscriber and by the reclaimer."""

    def __init__(
        self, settings: TelemetrySettings, redis: Redis, writer: TelemetryWriter, metrics: Metrics
    ) -> None:
        self.settings, self.redis, self.writer, self.metrics = settings, redis, writer, metrics
        self.keys: Keys = settings.keys
        self.consumer = settings.consumer
        self.reclaimer = reclaimer_of(settings.consumer)

    async def handle(
        self, ids: list[bytes], entries: list[dict[bytes, bytes]], consumer: str, reclaimed: bool
    ) -> None:
        """Write one delivery of ``entries`` and acknowledge it."""
        if not ids:
            return
        self.metrics.batch_size.observe(len(ids))
        poison: list[DeadLetter] = []
        if reclaimed:
            self.metrics.reclaimed.inc(len(ids))
            log.info("reclaimed %d idle entries, first %s", len(ids), ids[0].decode())
            ids, entries, poison = await self._drop_poison(ids, entries)
        batch = decode_batch(ids, entries)
        batch.entry_ids += [letter.entry_id for letter in poison]
        batch.dead += poison
        async with self._keep_claimed(batch.entry_ids, consumer):
            result = await self._write_until_accepted(batch.events, reclaimed)
        dead = batch.dead + [
            DeadLetter(
                batch.event_entries[event.event_id],
                "rejected",
                result.rejected[event.event_id],
                batch.texts[event.event_id],
            )
            for event in batch.events
            if event.event_id in result.rejected
        ]
        await self._ack(batch.entry_ids, dead)
        self.metrics.events_written.inc(result.written)
        self.metrics.duplicates.inc(result.duplicates + batch.repeats)
        self.metrics.recovered.inc(result.recovered)
        for letter in dead:
            self.metrics.dead_letters.labels(letter.kind).inc()
            log.warning("dead letter %s (%s): %s", letter.entry_id, letter.kind, letter.reason)

    async def _write_until_accepted(
        self, events: list[TelemetryEvent], reclaimed: bool
    ) -> WriteResult:
        """Retry the write until MongoDB accepts it; the same batch id on every attempt."""
        batch = ObjectId()
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = await self.writer.write(
                    events, batch, first_attempt=attempt == 0, recover_others=reclaimed
                )
            except (PyMongoError, RollupClashError) as exc:
                attempt += 1
                delay = backoff_s(attempt, self.settings.retry_base_s, self.settings.retry_cap_s)
                self.metrics.write_failures.inc()
                self.metrics.mongo_up.set(0)
                log.warning(
                    "MongoDB write of %d events failed (attempt %d), retry in %.2f s: %s",
                    len(events),
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                continue
            if events:
                self.metrics.write_seconds.observe(time.perf_counter() - started)
                self.metrics.mongo_up.set(1)
            if attempt:
                log.info(
                    "MongoDB accepted %d events after %d failed attempts", len(events), attempt
                )
            return result

    @contextlib.asynccontextmanager
    async def _keep_claimed(self, entry_ids: list[str], consumer: str) -> AsyncIterator[None]:
        """While the batch is handled, reset its idle time so no reclaimer takes it over."""
        interval_s = self.settings.claim_idle_ms / 3000
        ids: list[Any] = list(entry_ids)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.redis.xclaim(
                        self.keys.telemetry, TELEMETRY_GROUP, consumer, 0, ids, justid=True
                    )
                except RedisError as exc:
                    log.warning(
                        "could not refresh the claim on %d entries: %s", len(entry_ids), exc
                    )

        task = asyncio.create_task(heartbeat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drop_poison(
        self, ids: list[bytes], entries: list[dict[bytes, bytes]]
    ) -> tuple[list[bytes], list[dict[bytes, bytes]], list[DeadLetter]]:
        """Split off the entries delivered more than ``max_deliveries`` times, as dead letters."""
        keep_ids, keep_entries, poison = [], [], []
        for entry_id, fields in zip(ids, entries, strict=True):
            info = await self.redis.xpending_range(
                self.keys.telemetry, TELEMETRY_GROUP, entry_id, entry_id, 1
            )
            deliveries = int(info[0]["times_delivered"]) if info else 1
            if deliveries > self.settings.max_deliveries:
                reason = f"delivered {deliveries} times without being written"
                poison.append(
                    DeadLetter(
                        entry_id.decode(), "too_many_deliveries", reason, payload_text(fields)
                    )
                )
            else:
                keep_ids.append(entry_id)
                keep_entries.append(fields)
        return keep_ids, keep_entries, poison

    async def _ack(self, entry_ids: list[str], dead: list[DeadLetter]) -> None:
        """Append the dead letters and acknowledge the whole batch, atomically."""
        args: list[Arg] = [TELEMETRY_GROUP, self.settings.dlq_maxlen, len(dead)]
        dead_at = datetime.now(UTC).isoformat()
        for letter in dead:
            args += [letter.entry_id, "reason", _safe(letter.reason), "kind", letter.kind]
            args += ["payload", _safe(letter.payload), "entryId", letter.entry_id]
            args += ["stream", self.keys.telemetry, "deadAt", dead_at]
        keys = [self.keys.telemetry, self.keys.telemetry_dead_letters]
        await _DEAD_LETTER_AND_ACK(self.redis, keys, [*args, *entry_ids])

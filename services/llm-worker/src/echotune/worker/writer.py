"""Writing a request's events: buffered, appended by one flusher per process, fenced.

A token never waits for Redis: :meth:`EventWriter.delta` buffers it and wakes the
process's :class:`AppendFlusher`, which appends whatever every request accumulated in one
round trip, while the previous one was in flight. Idle, that is one entry per token as soon
as it comes; busy, fewer and larger writes (consecutive deltas of a request merge into one
entry). A process streaming many answers at once also spaces its rounds (:class:`Hold`), so
that a request's tokens merge: each hop after the append (Redis, the relay, the SSE frame)
then costs once per entry, not once per token. Entries carry the producer's fence and
sequence numbers (``request_stream.py``), so a retried append is applied once and a producer
that lost the job is refused. When Redis lost entries it had acknowledged (a failover's
asynchronous replication), the writer appends its ``restart`` event (a ``discard_partial``
failover) and everything it wrote again: a client that saw the lost entries and one that
never did both end with the whole answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from json.encoder import encode_basestring

from redis.exceptions import (
    AskError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from echotune.common.completion import TokenLogprob, ToolCallDelta
from echotune.common.messages import (
    ChatEvent,
    DeltaEvent,
    ErrorEvent,
    encode_event,
    internal_error,
)
from echotune.common.request_stream import (
    Appended,
    AppendRefused,
    Batch,
    Final,
    RequestStreams,
)
from echotune.worker.hold import Hold, held_rounds

log = logging.getLogger(__name__)

RETRY_S = 0.2
REPLAYS = 3
"""Finals tried after replays (each a failover losing entries) before giving up."""
ATTEMPTS = 3
"""Rounds a batch fails in a row, Redis reachable, before its answer ends with an error."""
TEXT = "text"
"""A buffered plain text delta, merged with the next until sent."""


class Refused(Exception):
    """The stream takes no more entries from this producer (fenced off, ended or gone)."""

    def __init__(self, why: AppendRefused) -> None:
        super().__init__(f"append refused: {why.value}")
        self.why = why


class WriteFailed(Exception):
    """A batch of this request failed again and again with Redis reachable: the answer ends."""


_AWAY = (
    OSError,
    RedisConnectionError,  # LOADING too
    RedisTimeoutError,
    ReadOnlyError,  # a failover: the primary became a replica
    OutOfMemoryError,
    TryAgainError,
    AskError,  # MOVED too: slots migrating
    ClusterError,  # CLUSTERDOWN, MASTERDOWN, a cluster client out of redirects
    RedisClusterException,
)
_AWAY_REPLIES = ("BUSY ", "MISCONF ")
"""Error replies redis-py names no class for that pass (a long script, a failing disk)."""


def redis_away(error: Exception) -> bool:
    """Whether ``error`` says Redis cannot take commands now (a round to send again), rather
    than that something in the round is wrong (a plain error reply, a bug while packing)."""
    if isinstance(error, _AWAY):
        return True
    return isinstance(error, ResponseError) and str(error).startswith(_AWAY_REPLIES)


class EventWriter:
    """Buffers the events of one request for one producer (a take's fence)."""

    def __init__(
        self,
        flusher: AppendFlusher,
        request_id: str,
        fence: str,
        *,
        on_cancel: Callable[[], None],
        on_refused: Callable[[AppendRefused], None],
        restart: ChatEvent,
        stamp: bool = False,
    ) -> None:
        self._flusher, self.request_id, self.fence = flusher, request_id, fence
        flusher.join(self)
        self._on_cancel, self._on_refused, self._stamp = on_cancel, on_refused, stamp
        fields = encode_event(restart)
        self._restart = (fields["type"], fields["data"])
        self._history: list[tuple[str, str]] = []  # every entry taken, for a replay
        self._taken_from = 0  # where the batch in flight begins in _history
        self._pending: list[list[str]] = []  # [type, data] or ["delta", text] (TEXT: merged)
        self._retry: Batch | None = None
        self._in_flight = False
        self._next_seq = 1
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._failures = 0  # rounds in a row this writer's batch failed, Redis reachable
        self.refused: AppendRefused | None = None
        self.failed: Exception | None = None

    def delta(self, text: str) -> None:
        """Buffer a piece of text; merged with the previous one if it was not sent yet."""
        self._check()
        if self._pending and self._pending[-1][0] == TEXT:
            self._pending[-1][1] += text
        else:
            self._pending.append([TEXT, text])
        self._changed()

    def pieces(
        self,
        text: str,
        *,
        tool_calls: list[ToolCallDelta] | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> None:
        """Buffer a delta that carries tool-call pieces or logprobs: an entry of its own."""
        self.emit(DeltaEvent(delta=text, tool_calls=tool_calls, logprobs=logprobs))

    def emit(self, event: ChatEvent) -> None:
        """Buffer any non-final event, in order after the text before it."""
        self._check()
        fields = encode_event(event)
        self._pending.append([fields["type"], fields["data"]])
        self._changed()

    async def flush(self) -> None:
        """Wait until everything buffered is in Redis; raises :class:`Refused` or
        :class:`WriteFailed`."""
        await self._idle.wait()
        self._check()

    async def final(self, event: ChatEvent) -> Final:
        """Flush, then write ``event`` as the last entry (once, even if retried); after a
        :class:`WriteFailed`, an internal error instead (the answer misses a batch)."""
        streams = self._flusher.streams
        for _ in range(REPLAYS):
            await self._idle.wait()
            if self.refused is not None:
                raise Refused(self.refused)
            if self.failed is not None and not isinstance(event, ErrorEvent):
                event = internal_error()  # the script says partial if text was stored
            outcome = await streams.append_final(self.request_id, self.fence, self._next_seq, event)
            if outcome is not Final.LOST:
                return outcome
            self._retry = self._replay(await streams.stored_seq(self.request_id))
            self._changed()
        return Final.LOST

    def close(self) -> None:
        """Drop whatever was not sent: the producer is gone (its job ended or was taken)."""
        if not self._closed:
            self._flusher.forget(self)
        self._closed = True
        self._pending, self._retry = [], None
        self._idle.set()

    def _check(self) -> None:
        if self.refused is not None:
            raise Refused(self.refused)
        if self.failed is not None:
            raise WriteFailed(f"appending to {self.request_id} failed: {self.failed!r}")

    def _changed(self) -> None:
        self._idle.clear()
        self._flusher.mark(self)

    def take_batch(self) -> Batch | None:
        """What to send now: a failed batch again as it was, else everything buffered."""
        if self._in_flight or self._closed:
            return None
        batch, self._retry = self._retry, None
        if batch is None and self._pending:
            entries = [self._entry(kind, value) for kind, value in self._pending]
            self._taken_from = len(self._history)
            self._history += entries
            batch = Batch(self.request_id, self.fence, self._next_seq, entries)
            self._next_seq += len(entries)
            self._pending = []
        self._in_flight = batch is not None
        return batch

    def _entry(self, kind: str, value: str) -> tuple[str, str]:
        """A text delta's JSON, written out: what ``json.dumps(..., ensure_ascii=False)``
        gives, at a sixth of its cost (an encoder object per call)."""
        if kind != TEXT:
            return kind, value
        if self._stamp:
            return "delta", f'{{"delta":{encode_basestring(value)},"t":{time.monotonic_ns()}}}'
        return "delta", f'{{"delta":{encode_basestring(value)}}}'

    def _replay(self, stored_seq: int) -> Batch:
        """The restart event and every entry again, after the last one Redis still holds."""
        log.warning("Redis lost entries after seq %d (a failover): replaying them", stored_seq)
        entries = [self._restart, *self._history]
        self._taken_from = len(self._history)  # a replay given up trims no history
        self._next_seq = stored_seq + 1 + len(entries)
        return Batch(self.request_id, self.fence, stored_seq + 1, entries)

    def sent(self, batch: Batch, result: Appended | Exception) -> None:
        self._in_flight = False
        failed = isinstance(result, Exception) and not redis_away(result)
        self._failures = self._failures + 1 if failed else 0
        if isinstance(result, Exception):
            if self._failures < ATTEMPTS:
                self._retry = batch
            else:
                self._fail(batch, result)
        elif result.stored_seq is not None:
            self._retry = self._replay(result.stored_seq)
        elif result.refused is not None:
            self.refused = result.refused
            self._pending = []
            self._on_refused(result.refused)
        elif result.cancelled:
            self._on_cancel()
        if self._closed:
            return
        if self._retry is not None or self._pending:
            self._flusher.mark(self)
        else:
            self._idle.set()

    def _fail(self, batch: Batch, error: Exception) -> None:
        """Give up ``batch`` and what follows it; the final goes where the batch would have."""
        log.error(
            "appending to %s failed %d times: the answer ends",
            self.request_id,
            ATTEMPTS,
            exc_info=error,
        )
        self.failed, self._failures = error, 0
        self._next_seq = batch.first_seq
        del self._history[self._taken_from :]  # a replay must not bring it back
        self._pending = []


class AppendFlusher:
    """Appends the buffered entries of every request of this process, one round trip a round."""

    def __init__(self, streams: RequestStreams, hold: Hold | None = None) -> None:
        self.streams = streams
        self.writers = 0
        """Open :class:`EventWriter` s: the answers this process is streaming."""
        self._hold = hold or Hold()
        self._own = streams.own_connection()
        self._dirty: dict[int, EventWriter] = {}
        self._wake = asyncio.Event()

    async def aclose(self) -> None:
        """Close the flusher's connection (after its task was cancelled)."""
        if self._own is not None:
            await self._own.aclose()

    def mark(self, writer: EventWriter) -> None:
        self._dirty[id(writer)] = writer
        self._wake.set()

    def hold_s(self) -> float:
        """The least time between two rounds now."""
        return self._hold.seconds(self.writers)

    def join(self, writer: EventWriter) -> None:
        """A new writer: counted until :meth:`forget`."""
        self.writers += 1

    def forget(self, writer: EventWriter) -> None:
        """A closed writer: no longer counted, nothing of it to send (no round held for it)."""
        self.writers -= 1
        self._dirty.pop(id(writer), None)

    async def run(self) -> None:
        await held_rounds(self._wake, self.hold_s, self._round)

    async def _round(self) -> None:
        writers = list(self._dirty.values())
        self._dirty.clear()
        if writers:
            await self._send(writers)

    async def _send(self, writers: list[EventWriter]) -> None:
        sending = [(w, b) for w in writers if (b := w.take_batch()) is not None]
        if not sending:
            return
        batches = [b for _, b in sending]
        try:
            results = await self.streams.append_many(batches, self._own)
        except Exception as exc:  # Redis unreachable even after the client's own retries,
            if redis_away(exc) or len(batches) == 1:  # or something in one batch is wrong
                results = [exc] * len(batches)
            else:  # each alone, so that only that one fails
                results = [await self._append_one(batch) for batch in batches]
        for (writer, batch), result in zip(sending, results, strict=True):
            writer.sent(batch, result)
        if failed := [r for r in results if isinstance(r, Exception)]:
            log.warning("appending %d batches failed: %s", len(failed), failed[0])
            if any(redis_away(error) for error in failed):  # else ATTEMPTS rounds end them
                await asyncio.sleep(RETRY_S)  # sent again, not at once

    async def _append_one(self, batch: Batch) -> Appended | Exception:
        try:
            [result] = await self.streams.append_many([batch], self._own)
        except Exception as exc:
            return exc
        return result

"""One multiplexed reader per gateway process for every per-request event stream.

Each open SSE response subscribes to its request's stream; a single task issues one
blocking ``XREAD`` over all subscribed streams on a dedicated connection and fans the
entries out to the subscribers' queues. A new subscription wakes the blocked read by
writing to this process's own wake-up stream, which is part of every ``XREAD``. On a Redis
Cluster the reads go per node instead (``cluster_reads.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from echotune.common.keys import Keys
from echotune.common.messages import EventType
from echotune.common.redis import create_redis, is_cluster
from echotune.gateway.chat.cluster_reads import ClusterReads

log = logging.getLogger(__name__)

StreamId = tuple[int, int]


MAX_ID_PART = 2**64 - 1
_ASCII_DIGITS = frozenset("0123456789")


def parse_stream_id(value: str) -> StreamId:
    """``"1700000000000-3"`` → ``(1700000000000, 3)``; ``ValueError`` unless Redis would take it.

    Only ASCII digits, each part at most 2^64 − 1: one id Redis refuses in the multiplexed
    XREAD would fail the read of every stream of the process.
    """
    ms, _, seq = value.partition("-")
    seq = seq or "0"
    if not (ms and set(ms) <= _ASCII_DIGITS and set(seq) <= _ASCII_DIGITS):
        raise ValueError(f"malformed stream id {value!r}")
    parsed = int(ms), int(seq)
    if max(parsed) > MAX_ID_PART:
        raise ValueError(f"stream id out of range {value!r}")
    return parsed


@dataclass(frozen=True, slots=True)
class Entry:
    """One event read from a request's stream."""

    id: str
    type: str
    data: str

    @property
    def is_terminal(self) -> bool:
        return self.type in (EventType.DONE, EventType.ERROR)


@dataclass(eq=False, slots=True)
class Subscription:
    """A reader of one request's events after ``last_id``."""

    request_id: str
    key: str
    last_id: str
    queue: asyncio.Queue[Entry] = field(default_factory=asyncio.Queue)


class StreamRelay:
    """Multiplexes the XREADs of all open streams of this process onto one connection."""

    def __init__(self, redis_url: str, keys: Keys, *, block_ms: int, batch: int) -> None:
        self._cluster: ClusterReads | None = None
        if is_cluster(redis_url):
            self._cluster = ClusterReads(
                redis_url, self._position, self._deliver, batch=batch, resync_s=block_ms / 1000
            )
        self._redis: Redis = create_redis(
            redis_url, max_connections=1, socket_timeout=block_ms / 1000 + 5
        )
        self._waker: Redis = create_redis(redis_url, max_connections=2)
        self._keys = keys
        self._block_ms = block_ms
        self._batch = batch
        self.gateway_id = uuid.uuid4().hex
        self._wakeup_key = keys.gateway_wakeup(self.gateway_id)
        self._wakeup_last = "0-0"
        self._subs: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake_pending = False
        self._stopping = False
        self._waking: set[asyncio.Task[None]] = set()

    def attached_request_ids(self) -> list[str]:
        return [next(iter(subs)).request_id for subs in self._subs.values() if subs]

    async def start(self) -> None:
        if self._cluster is not None:
            await self._cluster.start()
            return
        self._task = asyncio.create_task(self._run(), name="stream-relay")

    async def stop(self) -> None:
        self._stopping = True
        if self._cluster is not None:
            await self._cluster.stop()
        elif self._task:
            # redis-py can swallow a cancellation that lands as it sends a command (its
            # wait_for, Python 3.11): then the flag ends the loop once a wake-up ends the read.
            self._task.cancel()
            _, pending = await asyncio.wait({self._task}, timeout=0.2)
            if pending:
                await self._wake()
                await asyncio.wait(pending, timeout=self._block_ms / 1000 + 1)
        if self._cluster is None:
            with contextlib.suppress(RedisError):
                await self._waker.delete(self._wakeup_key)
        await self._redis.aclose()
        await self._waker.aclose()

    def subscribe(self, request_id: str, after_id: str) -> Subscription:
        """Relay the events after ``after_id``; the blocked read is woken in the background."""
        sub = Subscription(request_id, self._keys.events(request_id), after_id)
        self._subs.setdefault(sub.key, set()).add(sub)
        if self._cluster is not None:
            self._cluster.watch(sub.key)
        elif not self._wake_pending:
            self._wake_pending = True
            task = asyncio.create_task(self._wake())
            self._waking.add(task)
            task.add_done_callback(self._waking.discard)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    async def _wake(self) -> None:
        """Wake the blocked read once per read cycle, however many streams subscribe meanwhile."""
        try:
            async with self._waker.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wakeup_key, {"w": "1"}, maxlen=16, approximate=True)
                pipe.expire(self._wakeup_key, 3600)
                await pipe.execute()
        except RedisError:
            log.warning("could not wake the relay; it wakes by itself within its block time")

    def _read_positions(self) -> dict[str, str]:
        self._wake_pending = False
        positions = {self._wakeup_key: self._wakeup_last}
        for key, subs in self._subs.items():
            positions[key] = min((s.last_id for s in subs), key=parse_stream_id)
        return positions

    async def _run(self) -> None:
        while not self._stopping:
            try:
                positions: Any = self._read_positions()
                reply: Any = await self._redis.xread(
                    positions, count=self._batch, block=self._block_ms
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:
                    return
                log.exception("relay read failed; retrying in 0.5 s")
                await asyncio.sleep(0.5)
                continue
            for key, entries in reply or ():
                if key == self._wakeup_key:
                    self._wakeup_last = entries[-1][0]
                else:
                    self._dispatch(key, entries, parse_stream_id(positions[key]))

    def _position(self, key: str) -> str | None:
        """Where the slowest reader of ``key`` is (``None``: nobody reads it)."""
        subs = self._subs.get(key)
        return min((s.last_id for s in subs), key=parse_stream_id) if subs else None

    def _deliver(self, key: str, entries: list[tuple[str, dict[str, str]]], after: str) -> None:
        self._dispatch(key, entries, parse_stream_id(after))

    def _dispatch(
        self, key: str, entries: list[tuple[str, dict[str, str]]], read_after: StreamId
    ) -> None:
        """Hand entries read after ``read_after`` to the subscribers that had read that far.

        One that subscribed meanwhile at an earlier position is served by the next read
        (from its own position): handing it these would skip what lies in between.
        """
        for sub in tuple(self._subs.get(key, ())):
            after = parse_stream_id(sub.last_id)
            if after < read_after:
                continue
            for entry_id, fields in entries:
                if parse_stream_id(entry_id) <= after:
                    continue
                sub.queue.put_nowait(
                    Entry(entry_id, fields.get("type", ""), fields.get("data", ""))
                )
                sub.last_id = entry_id

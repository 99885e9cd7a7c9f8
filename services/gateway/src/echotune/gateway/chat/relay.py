"""One multiplexed reader per gateway process for every per-request event stream.

Each open SSE response subscribes to its request's stream; a single task issues one
blocking ``XREAD`` over all subscribed streams on a dedicated connection and fans the
entries out to the subscribers' queues. A new subscription wakes the blocked read by
writing to this process's own wake-up stream, which is part of every ``XREAD``: at once for
a reader that resumes or attaches (its entries are stored already), and for a new answer
only if no read began within a round (busy, reads begin every few ms anyway; its first entry
is a worker's round trips and a provider's first token away).

An ``XREAD`` names every open stream, so its cost grows with them: reads start at least
``round_s`` apart from ``full_at`` open streams on, proportionally less below. Idle, an entry
is read as it comes (the read was waiting for it); busy, one read brings what many streams
got meanwhile. On a Redis Cluster the reads go per node instead (``cluster_reads.py``).

With a ``barrier`` (``REDIS_WAIT_REPLICAS``), every read is followed on its connection by a
replicated write, its ``WAIT`` and ``ROLE``: what a read saw is handed out once a replica
holds it (waiting longer for one online that lags), so a failover does not take back an
event a client got (``request_stream.ReadBarrier``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from echotune.common import resp
from echotune.common.keys import Keys
from echotune.common.messages import EventType
from echotune.common.redis import create_redis, is_cluster
from echotune.common.request_stream import TAKE_FIELD, ReadBarrier
from echotune.gateway.chat.cluster_reads import ClusterReads

log = logging.getLogger(__name__)

StreamId = tuple[int, int]


MAX_ID_PART = 2**64 - 1
WAKE_AFTER_S = 0.001
"""A new answer's wake-up waits this long past the read spacing for a read to begin."""
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
    take: str = ""
    """The take it names, written with no text stored before it (``TAKE_FIELD``)."""

    @property
    def is_terminal(self) -> bool:
        return self.type in (EventType.DONE, EventType.ERROR)


def entry_of(entry_id: str, fields: list[Any]) -> Entry:
    """The entry of an ``XREAD`` reply's flat field list; the layout the request streams write
    (``v``, ``type``, ``data``) is read in place, any other through a dict (~1.3 µs less per
    relayed token)."""
    if len(fields) == 6 and fields[2] == "type" and fields[4] == "data":
        return Entry(entry_id, fields[3], fields[5])
    return named_entry(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))


def named_entry(entry_id: str, fields: dict[str, str]) -> Entry:
    """The entry of a field map."""
    return Entry(
        entry_id, fields.get("type", ""), fields.get("data", ""), fields.get(TAKE_FIELD, "")
    )


class Inbox:
    """The entries relayed to one reader, in order; a timed wait arms no timer per entry."""

    def __init__(self) -> None:
        # asyncio.get_running_loop() costs a getpid() syscall on Python 3.11: looked up once
        self._loop = asyncio.get_running_loop()
        self._items: deque[Entry] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def put_nowait(self, entry: Entry) -> None:
        self._items.append(entry)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Entry:
        while not self._items:
            await self._wait()
        return self._items.popleft()

    async def get_within(self, timeout: float) -> Entry | None:
        """The next entry, or ``None`` if none comes within ``timeout`` seconds."""
        if not self._items:
            loop = self._loop
            self._due = loop.time() + timeout
            # one timer, moved later lazily (it fires once per period at most), earlier at once
            if self._timer is not None and self._timer.when() > self._due:
                self._timer.cancel()
                self._timer = None
            if self._timer is None:
                self._timer = loop.call_at(self._due, self._expire, loop)
            await self._wait()
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        if loop.time() < self._due:
            self._timer = loop.call_at(self._due, self._expire, loop)
        else:
            self._waiter.set_result(None)


@dataclass(eq=False, slots=True)
class Subscription:
    """A reader of one request's events after ``last_id`` (``after``: the same, parsed).

    ``key_arg`` and ``id_arg`` are its XREAD arguments, packed once, not on every read."""

    request_id: str
    key: str
    last_id: str
    after: StreamId = (0, 0)
    queue: Inbox = field(default_factory=lambda: Inbox())
    key_arg: bytes = b""
    id_arg: bytes = b""

    def __post_init__(self) -> None:
        self.moved(self.last_id, parse_stream_id(self.last_id))
        self.key_arg = resp.bulk(self.key)

    def moved(self, last_id: str, after: StreamId) -> None:
        self.last_id, self.after, self.id_arg = last_id, after, resp.bulk(last_id)


class StreamRelay:
    """Multiplexes the XREADs of all open streams of this process onto one connection."""

    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        *,
        block_ms: int,
        batch: int,
        round_s: float = 0.0,
        full_at: int = 100,
        barrier: ReadBarrier | None = None,
    ) -> None:
        self._barrier = barrier
        self._cluster: ClusterReads | None = None
        if is_cluster(redis_url):
            self._cluster = ClusterReads(
                redis_url,
                self._position,
                self._deliver,
                batch=batch,
                resync_s=block_ms / 1000,
                barrier=barrier,
                request_of=self._request_of,
            )
        self._redis: Redis = create_redis(
            redis_url, max_connections=1, socket_timeout=block_ms / 1000 + 5
        )
        self._connection = resp.OwnConnection(self._redis)
        self._waker: Redis = create_redis(redis_url, max_connections=2)
        self._keys = keys
        self._block_ms = block_ms
        self._batch, self._round_s, self._full_at = batch, round_s, full_at
        self.gateway_id = uuid.uuid4().hex
        self._wakeup_key = keys.gateway_wakeup(self.gateway_id)
        self._wakeup_last = "0-0"
        self._xread = b"".join(
            map(resp.bulk, ["XREAD", "COUNT", str(batch), "BLOCK", str(block_ms), "STREAMS"])
        )
        self._subs: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._cycle = 0  # reads begun
        self._wake_in: float | None = None  # the delay of this cycle's wake-up, if one is due
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
        for task in self._waking:  # a delayed wake-up would write after the clean-up
            task.cancel()
        if self._cluster is not None:
            await self._cluster.stop()
        elif self._task:
            # Should a cancellation ever be swallowed (redis-py's asyncio.wait_for did, on
            # Python 3.11), the flag ends the loop once a wake-up ends the read.
            self._task.cancel()
            _, pending = await asyncio.wait({self._task}, timeout=0.2)
            if pending:
                await self._wake(self._cycle, 0.0)
                await asyncio.wait(pending, timeout=self._block_ms / 1000 + 1)
        if self._cluster is None:
            with contextlib.suppress(RedisError):
                await self._waker.delete(self._wakeup_key)
        await self._connection.aclose()
        await self._redis.aclose()
        await self._waker.aclose()

    def subscribe(self, request_id: str, after_id: str, *, new: bool = False) -> Subscription:
        """Relay the events after ``after_id``; the blocked read is woken in the background
        (``new``: a new answer's, woken only if no read begins meanwhile)."""
        sub = Subscription(request_id, self._keys.events(request_id), after_id)
        self._subs.setdefault(sub.key, set()).add(sub)
        if self._cluster is not None:
            self._cluster.watch(sub.key)
        else:
            delay = self._spacing() + WAKE_AFTER_S if new else 0.0
            if self._wake_in is None or delay < self._wake_in:
                self._wake_in = delay
                task = asyncio.create_task(self._wake(self._cycle, delay))
                self._waking.add(task)
                task.add_done_callback(self._waking.discard)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.queue.close()
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    async def _wake(self, cycle: int, delay: float) -> None:
        """Wake the blocked read after ``delay`` unless a read began since ``cycle`` (it names
        the new streams). A cycle has one wake-up however many streams subscribe in it, two
        when a resume comes after a new answer's (it cannot wait)."""
        if delay > 0:
            await asyncio.sleep(delay)
            if self._cycle != cycle:
                return
        try:
            async with self._waker.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wakeup_key, {"w": "1"}, maxlen=16, approximate=True)
                pipe.expire(self._wakeup_key, 3600)
                await pipe.execute()
        except RedisError:
            log.warning("could not wake the relay; it wakes by itself within its block time")

    def _read_positions(self) -> dict[str, Subscription | None]:
        """The slowest reader of every stream read (``None``: the wake-up stream)."""
        self._cycle += 1
        self._wake_in = None
        positions: dict[str, Subscription | None] = {self._wakeup_key: None}
        for key, subs in self._subs.items():
            positions[key] = min(subs, key=_position_of) if len(subs) > 1 else next(iter(subs))
        return positions

    async def _run(self) -> None:
        loop, began = asyncio.get_running_loop(), 0.0
        while not self._stopping:
            try:
                if (wait := began + self._spacing() - loop.time()) > 0:
                    await asyncio.sleep(wait)  # busy: what comes meanwhile joins this read
                began = loop.time()
                positions = self._read_positions()
                reply = await self._read(positions)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:
                    return
                log.exception("relay read failed; retrying in 0.5 s")
                await asyncio.sleep(0.5)
                continue
            # RESP3: a map of stream → entries; RESP2: a list of [stream, entries]
            streams = reply.items() if isinstance(reply, dict) else reply or ()
            for key, entries in streams:
                slowest = positions.get(key)
                if slowest is not None:
                    read = [entry_of(i, f) for i, f in entries if f]
                    self._dispatch(key, read, slowest.after, slowest)
                elif key == self._wakeup_key:
                    self._wakeup_last = entries[-1][0]

    def _spacing(self) -> float:
        """Least time between two reads: ``round_s`` from ``full_at`` open streams on."""
        return self._round_s * min(len(self._subs) / self._full_at, 1.0)

    def _command(self, positions: dict[str, Subscription | None]) -> bytes:
        """``XREAD COUNT … BLOCK … STREAMS keys… ids…`` in RESP, from the packed pieces."""
        subs = positions.values()
        wakeup_key, wakeup_id = resp.bulk(self._wakeup_key), resp.bulk(self._wakeup_last)
        return b"".join(
            [
                b"*%d\r\n" % (6 + 2 * len(positions)),
                self._xread,
                *[wakeup_key if s is None else s.key_arg for s in subs],
                *[wakeup_id if s is None else s.id_arg for s in subs],
            ]
        )

    async def _read(self, positions: dict[str, Subscription | None]) -> Any:
        """Send the packed read (and the barrier after it) on the relay's connection; its
        reply as hiredis parsed it (redis-py would pack the arguments and rebuild the reply
        entry by entry)."""
        command, barrier = self._command(positions), self._barrier_after(positions)
        reply, *confirms = await self._connection.send(
            command + b"".join(barrier), 1 + len(barrier)
        )
        if isinstance(reply, Exception):  # an error reply
            raise reply
        if self._barrier is not None and confirms:
            streams = reply.keys() if isinstance(reply, dict) else [s for s, _ in reply or ()]
            handing_out = any(key != self._wakeup_key for key in streams)
            again = functools.partial(self._connection.send, retry=False)
            await self._barrier.settle(confirms, again, handing_out=handing_out)
        return reply

    def _barrier_after(self, positions: dict[str, Subscription | None]) -> list[bytes]:
        """The barrier's commands, on the first stream read (none: nothing to hold back)."""
        if self._barrier is None:
            return []
        sub = next((s for s in positions.values() if s is not None), None)
        if sub is None:
            return []
        return [resp.command(*c) for c in self._barrier.commands(sub.request_id)]

    def _request_of(self, key: str) -> str:
        """The request of a stream someone reads."""
        return next(iter(self._subs[key])).request_id

    def _position(self, key: str) -> str | None:
        """Where the slowest reader of ``key`` is (``None``: nobody reads it)."""
        subs = self._subs.get(key)
        return min(subs, key=_position_of).last_id if subs else None

    def _deliver(self, key: str, entries: list[tuple[str, dict[str, str]]], after: str) -> None:
        read = [named_entry(i, f) for i, f in entries]
        self._dispatch(key, read, parse_stream_id(after))

    def _dispatch(
        self,
        key: str,
        entries: list[Entry],
        read_after: StreamId,
        reader: Subscription | None = None,
    ) -> None:
        """Hand entries read after ``read_after`` to the subscribers that had read that far.

        One that subscribed meanwhile at an earlier position is served by the next read
        (from its own position): handing it these would skip what lies in between. The
        ``reader``, whose position ``read_after`` is, gets every entry unparsed when it is the
        only subscriber (the usual case).
        """
        subs = self._subs.get(key)
        if not subs or not entries:
            return
        if len(subs) == 1 and reader in subs:
            queue = reader.queue
            for entry in entries:
                queue.put_nowait(entry)
            last = entries[-1].id
            reader.moved(last, parse_stream_id(last))
            return
        parsed = [(parse_stream_id(entry.id), entry) for entry in entries]
        for sub in tuple(subs):
            if sub.after < read_after:
                continue
            for position, entry in parsed:
                if position <= sub.after:
                    continue
                sub.queue.put_nowait(entry)  # frozen: one object for every reader
                sub.moved(entry.id, position)


def _position_of(sub: Subscription) -> StreamId:
    return sub.after

"""The relay's reads on a Redis/Valkey Cluster: per node, woken by the node itself.

On a single Redis the relay reads every open stream with one blocking ``XREAD``. A cluster
refuses that: the keys of one command must share a hash slot (``CROSSSLOT``), even on one
node, and each request's stream has its own slot. A blocking ``XREAD`` per slot would cost a
connection per open stream. So the relay keeps two connections per primary node instead:

* the **listener** is subscribed to ``__redis__:invalidate``;
* the **reader** has ``CLIENT TRACKING ON REDIRECT <listener>``: every stream it reads, the
  node remembers, and tells the listener (once) when that stream changes next.

The reader reads exactly the streams the node said changed, all of them in one pipeline of
single-key ``XREAD`` s (each a single slot), which also tracks them again. A stream is first
read when it is subscribed, and every stream of a node is read again after a reconnect and
every ``resync_s`` (a safety net: nothing waits on it). With a ``barrier``, the pipeline ends
with its replicated write, ``WAIT`` and ``ROLE``, and what it read is handed out only after
them (waiting longer for an online replica that lags).

Which node reads a stream follows the slot map: a ``MOVED`` reply (resharding, or a replica
promoted after a failover) refreshes the map and moves the stream to its new node, an
``ASK`` reads it on the importing node while the slot migrates, and a node that cannot be
reached refreshes the map too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import (
    AskError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from echotune.common.redis import ClusterAddress, cluster_address, create_redis
from echotune.common.request_stream import ReadBarrier

log = logging.getLogger(__name__)

INVALIDATE = "__redis__:invalidate"
STOP_S = 2.0
"""How long a node's reads may take to stop."""
MOVED_PAUSE_S = 0.05
"""Reads whose barrier's slot moved are read again this much later (not in a tight loop)."""
Entries = list[tuple[str, dict[str, str]]]
Position = Callable[[str], "str | None"]
"""Where to read a stream from (its slowest reader's last id); ``None``: nobody reads it."""
Deliver = Callable[[str, Entries, str], None]
"""Hand entries read after a position to the stream's readers."""


def _entries(raw: Any) -> Entries:
    """A raw ``XREAD`` reply for one stream (RESP2) as (id, fields) pairs."""
    if not raw:
        return []
    (_, items), *_ = raw
    return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in items]


class ClusterReads:
    """Reads the relay's streams on every primary node of a cluster."""

    def __init__(
        self,
        redis_url: str,
        position: Position,
        deliver: Deliver,
        *,
        batch: int,
        resync_s: float,
        barrier: ReadBarrier | None = None,
        request_of: Callable[[str], str] | None = None,
    ) -> None:
        """``request_of``: the request of a stream read (for the ``barrier``'s mark)."""
        if barrier is not None and request_of is None:
            raise ValueError("a barrier needs request_of")
        address = cluster_address(redis_url)
        assert address is not None, "ClusterReads needs a redis+cluster:// URL"
        self.address, self.position, self.deliver = address, position, deliver
        self.batch, self.resync_s = batch, resync_s
        self.barrier, self.request_of = barrier, request_of
        self._topology: RedisCluster = create_redis(redis_url)  # type: ignore[assignment]
        self._nodes: dict[str, NodeReads] = {}
        self._refreshing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._topology.initialize()

    async def stop(self) -> None:
        for node in list(self._nodes.values()):
            await node.stop()
        self._nodes.clear()
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self._topology.aclose()

    def watch(self, key: str) -> None:
        """Read ``key`` now and whenever it changes (until nobody reads it)."""
        self._node_for(key).watch(key)

    def _node_for(self, key: str) -> NodeReads:
        """The reads of the node serving ``key``'s slot, as the slot map says (a slot no node
        serves, during a failover: any primary, whose ``MOVED`` will tell)."""
        try:
            node = self._topology.get_node_from_key(key)
        except RedisClusterException:
            node = None
        if node is None:
            node = self._topology.get_random_node()
            self.refresh()
        return self._node(node.host, int(node.port))

    def _node(self, host: str, port: int) -> NodeReads:
        name = f"{host}:{port}"
        reads = self._nodes.get(name)
        if reads is None:
            reads = self._nodes[name] = NodeReads(self, host, port)
        return reads

    # --- topology changes -------------------------------------------------------------------

    def moved(self, key: str, error: MovedError) -> None:
        """``key``'s slot is served elsewhere now: read it there, and re-read the slot map."""
        self._node(error.host, error.port).watch(key)
        self.refresh()

    def asked(self, key: str, error: AskError) -> None:
        """``key``'s slot is migrating and the key is on the importing node already."""
        self._node(error.host, error.port).watch(key, asking=True)

    def refresh(self) -> None:
        """Re-read the slot map (once at a time) and move every stream to its node."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self._topology.nodes_manager.initialize()
        except (RedisError, RedisClusterException) as exc:
            log.warning("could not read the cluster's slot map: %s", exc)
            return
        for name, reads in list(self._nodes.items()):
            for key in list(reads.keys):
                target = self._node_for(key)
                if target is not reads:
                    reads.forget(key)
                    target.watch(key)
            if not reads.keys and name not in self._primaries():
                await reads.stop()
                del self._nodes[name]

    def _primaries(self) -> set[str]:
        return {
            f"{n.host}:{n.port}"
            for n in self._topology.nodes_manager.get_nodes_by_server_type("primary")
        }


class NodeReads:
    """The streams one node serves: read when it says they changed, on two connections."""

    def __init__(self, owner: ClusterReads, host: str, port: int) -> None:
        self.owner, self.host, self.port = owner, host, port
        self.keys: set[str] = set()
        self._dirty: set[str] = set()
        self._asking: set[str] = set()
        self._lock = asyncio.Lock()
        self._reader: Connection | None = None
        self._listener: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._soon: set[asyncio.Task[None]] = set()

    def watch(self, key: str, *, asking: bool = False) -> None:
        """Read ``key`` on this node now, then whenever the node says it changed."""
        self.keys.add(key)
        self._dirty.add(key)
        if asking:
            self._asking.add(key)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"relay-{self.host}:{self.port}")
        elif self._reader is not None:
            task = asyncio.create_task(self._read_now())
            self._soon.add(task)
            task.add_done_callback(self._soon.discard)

    def forget(self, key: str) -> None:
        self.keys.discard(key)
        self._dirty.discard(key)
        self._asking.discard(key)

    async def stop(self) -> None:
        """Stop reading, within ``STOP_S`` even if a cancellation is swallowed (redis-py's
        connect under ``asyncio.wait_for`` can turn one into a ``TimeoutError`` on Python
        3.11: the loop took it for a failed read and went on, and a gateway's stop hung)."""
        self.keys.clear()  # the loop ends at its next turn whatever became of the cancel
        tasks = [task for task in [*self._soon, self._task] if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            done, late = await asyncio.wait(tasks, timeout=STOP_S)
            for task in done:  # retrieved: an error of a read that was ending is no news
                if not task.cancelled():
                    task.exception()
            if late:
                log.warning("relay reads on %s:%d did not stop", self.host, self.port)
        self._task = None

    def _connection(self) -> Connection:
        address: ClusterAddress = self.owner.address
        cls = SSLConnection if address.ssl else Connection
        return cls(
            host=self.host,
            port=self.port,
            username=address.username,
            password=address.password,
            protocol=2,
            decode_responses=True,
            socket_timeout=self.owner.resync_s + 5,
            socket_keepalive=True,
        )

    async def _run(self) -> None:
        backoff = 0.05
        while self.keys:
            listener, reader = self._connection(), self._connection()
            try:
                await self._track(listener, reader)
                backoff = 0.05
                self._dirty |= self.keys  # whatever changed while it was not tracked
                await self._serve(listener, reader)
            except (RedisError, OSError) as exc:
                log.warning("relay reads on %s:%d failed (%s); retrying", self.host, self.port, exc)
                self.owner.refresh()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                self._reader = self._listener = None
                await listener.disconnect()
                await reader.disconnect()
        self._task = None

    async def _track(self, listener: Connection, reader: Connection) -> None:
        await listener.connect()  # type: ignore[no-untyped-call]
        await listener.send_command("CLIENT", "ID")
        listener_id = await listener.read_response()
        await listener.send_command("SUBSCRIBE", INVALIDATE)
        await listener.read_response()
        await reader.connect()  # type: ignore[no-untyped-call]
        await reader.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", listener_id)
        await reader.read_response()
        self._reader, self._listener = reader, listener

    async def _serve(self, listener: Connection, reader: Connection) -> None:
        """Read what changed, as soon as the node says so; everything every ``resync_s``."""
        resync_s = self.owner.resync_s
        resync_at, pinged = time.monotonic() + resync_s, False
        while self.keys:
            async with self._lock:
                await self._read_dirty(reader)
            # After a full batch, only take the changes told meanwhile and read on.
            wait = 0.0 if self._dirty else max(resync_at - time.monotonic(), 0.0)
            message = await listener.read_response(timeout=wait)
            if message is not None:
                pinged = False
                self._heard(message)
                while await listener.can_read():  # every change already told
                    self._heard(await listener.read_response())
            if time.monotonic() >= resync_at:  # the safety net: re-read all, check the listener
                if pinged:
                    raise ConnectionError("the invalidation listener does not answer")
                await listener.send_command("PING")
                self._dirty |= self.keys
                resync_at, pinged = time.monotonic() + resync_s, True

    def _heard(self, message: Any) -> None:
        """Mark the streams an invalidation names (all of them after a flush)."""
        if not isinstance(message, list) or message[0] != "message":
            return  # the reply to SUBSCRIBE or PING
        changed = message[2]
        if changed is None:
            self._dirty |= self.keys
        else:
            self._dirty.update(key for key in changed if key in self.keys)

    async def _read_now(self) -> None:
        """Read a stream subscribed meanwhile, without waiting for the next change."""
        reader, listener = self._reader, self._listener
        if reader is None or listener is None:
            return  # (re)connecting: every stream is read once connected
        try:
            async with self._lock:
                if reader is self._reader:
                    await self._read_dirty(reader)
        except (RedisError, OSError):
            await listener.disconnect()  # the serving loop notices and reconnects

    async def _read_dirty(self, reader: Connection) -> None:
        """Read every changed stream in one pipeline of single-slot ``XREAD`` s."""
        dirty, self._dirty = self._dirty, set()
        batch = self.owner.batch
        reads: list[tuple[str, str, bool]] = []
        commands: list[tuple[Any, ...]] = []
        for key in dirty:
            after = self.owner.position(key)
            if after is None:  # nobody reads it any more
                self.keys.discard(key)
                self._asking.discard(key)
                continue
            asking = key in self._asking
            if asking:
                commands.append(("ASKING",))
            commands.append(("XREAD", "COUNT", batch, "STREAMS", key, after))
            reads.append((key, after, asking))
        if not commands:
            return
        barrier = self._barrier(reads)
        await reader.send_packed_command(reader.pack_commands([*commands, *barrier]))
        read: list[tuple[str, Entries, str]] = []
        for key, after, asking in reads:
            if asking:
                with contextlib.suppress(ResponseError):
                    await reader.read_response()
            try:
                raw = await reader.read_response()
            except MovedError as error:
                self.forget(key)
                self.owner.moved(key, error)
                continue
            except AskError as error:
                self.forget(key)
                self.owner.asked(key, error)
                continue
            except ResponseError as error:  # CLUSTERDOWN, TRYAGAIN…: again at the next resync
                log.warning("relay read of %s failed: %s", key, error)
                self.owner.refresh()
                continue
            if entries := _entries(raw):
                read.append((key, entries, after))
        if barrier and not await self._may_hand_out(reader, len(barrier), bool(read)):
            self._dirty.update(key for key, _, _ in read)  # read again once the slot is known
            return
        for key, entries, after in read:
            self.owner.deliver(key, entries, after)
            if len(entries) >= batch:
                self._dirty.add(key)  # more is waiting, and no change will be told for it

    def _barrier(self, reads: list[tuple[str, str, bool]]) -> list[tuple[Any, ...]]:
        """The owner's barrier, on the slot of the first stream read here."""
        barrier, request_of = self.owner.barrier, self.owner.request_of
        if barrier is None or request_of is None:
            return []
        key, _, asking = reads[0]
        return barrier.commands(request_of(key), asking=asking)

    async def _may_hand_out(self, reader: Connection, count: int, handing_out: bool) -> bool:
        """Whether what the pipeline read may be handed out, once its barrier says so
        (``ReadBarrier.settle``); not if the mark's slot moved (then after a pause: the slot
        map is read again meanwhile)."""
        assert self.owner.barrier is not None
        replies = await _replies(reader, count)
        again = functools.partial(_exchange, reader)
        try:
            await self.owner.barrier.settle(replies, again, handing_out=handing_out)
        except MovedError as error:
            log.warning("relay reads read again: their barrier's slot moved (%s)", error)
            self.owner.refresh()
            await asyncio.sleep(MOVED_PAUSE_S)
            return False
        return True


async def _replies(reader: Connection, count: int) -> list[Any]:
    """``count`` replies, an error reply in its place."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await reader.read_response())
        except ResponseError as error:
            replies.append(error)
    return replies


async def _exchange(reader: Connection, packed: bytes, count: int) -> list[Any]:
    """Send ``packed`` on ``reader`` (never reconnecting it: a ``WAIT`` waits for its own
    connection's writes) and read its ``count`` replies."""
    if not reader.is_connected:
        raise ConnectionError("the relay's reads lost their connection")
    await reader.send_packed_command(packed, check_health=False)
    return await _replies(reader, count)

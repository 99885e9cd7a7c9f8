"""Cancel announcements on a Redis Cluster, heard through any node that is up.

A ``PUBLISH`` reaches every node of a cluster, so one subscription on any node (primary or
replica) hears every cancel. FastStream's cluster subscriber stays on the node it first chose:
once that node is gone it retries it forever and the worker hears no cancel again (it still
re-reads the flag every ``READER_CHECK_S``). This listener moves to another node instead,
and pings its node so that a silent one is left too. On one Redis the FastStream subscriber
is used (``app.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from echotune.common.redis import DRIVER_INFO, cluster_address, create_redis

log = logging.getLogger(__name__)

PING_S = 2.0
"""How often the node is pinged; one that stays silent for three pings is left."""


class ClusterCancels:
    """Subscribes to ``channel`` through one node of the cluster, and another when it fails."""

    def __init__(self, redis_url: str, channel: str, on_cancel: Callable[[str], None]) -> None:
        address = cluster_address(redis_url)
        assert address is not None, "ClusterCancels needs a redis+cluster:// URL"
        self.address, self.channel, self.on_cancel = address, channel, on_cancel
        self._topology: RedisCluster = create_redis(redis_url)  # type: ignore[assignment]
        self.node: tuple[str, int] | None = None
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        failed: tuple[str, int] | None = None
        pause = 0.05
        try:
            while True:
                node = await self._pick(avoid=failed)
                try:
                    await self._listen(node)
                except (RedisError, OSError) as exc:
                    log.warning("cancel announcements via %s:%d failed (%s)", *node, exc)
                failed, self.node = node, None
                self.subscribed.clear()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
        finally:
            await self._topology.aclose()

    async def _pick(self, avoid: tuple[str, int] | None) -> tuple[str, int]:
        """A node of the current slot map (another than ``avoid`` when there is one)."""
        try:
            await self._topology.nodes_manager.initialize()
        except (RedisError, RedisClusterException) as exc:
            log.warning("could not read the cluster's nodes: %s", exc)
        nodes = [(n.host, int(n.port)) for n in self._topology.get_nodes()]
        others = [n for n in nodes if n != avoid] or nodes or list(self.address.nodes)
        return random.choice(others)

    async def _listen(self, node: tuple[str, int]) -> None:
        host, port = node
        client = Redis(
            host=host,
            port=port,
            username=self.address.username,
            password=self.address.password,
            ssl=self.address.ssl,
            decode_responses=True,
            socket_timeout=PING_S * 3,
            driver_info=DRIVER_INFO,
        )
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            self.node = node
            self.subscribed.set()
            heard_at = ping_at = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=PING_S)
                now = time.monotonic()
                if message is not None:
                    heard_at = now
                    if message["type"] == "message":
                        self.on_cancel(str(message["data"]))
                if now - heard_at > 3 * PING_S:
                    raise ConnectionError("the node does not answer pings")
                if now - ping_at >= PING_S:
                    await pubsub.ping()
                    ping_at = now
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

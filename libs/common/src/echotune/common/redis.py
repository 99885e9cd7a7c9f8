"""Redis client factory used in service lifespans: one Redis, or a Redis/Valkey Cluster.

``ECHOTUNE_REDIS_URL`` names a single server (``redis://host:port/db``, ``rediss://`` for
TLS) or a cluster: ``redis+cluster://[user:password@]host:port[,host:port…]`` (TLS:
``rediss+cluster://``), any reachable nodes as seeds - the others are discovered.
"""

from __future__ import annotations

import asyncio
import builtins
import codecs
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from faststream.redis import RedisBroker, RedisClusterBroker
from faststream.redis.configs.state import RedisConnectionState
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from echotune.common.redis_pool import QuickPool

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
BROKER_CONNECTIONS = 256
BROKER_POOL_WAIT_S = 10.0
"""A broker command waits this long for one of its ``BROKER_CONNECTIONS`` (one Redis)."""
CLUSTER_CONNECTIONS_PER_NODE = 1024
"""A cluster client fails (``MaxConnectionsError``) rather than waits beyond its per-node limit;
connections are opened only when needed, so the limit is set well above any burst."""
BROKER_SOCKET_TIMEOUT_S = 30.0
"""A broker's reads outlast the longest blocking subscriber read (redis-py's default is 5 s:
the workers' 5 s jobs read timed out, and a job delivered as it did waited for a reclaim)."""
DRIVER_INFO = DriverInfo()
"""What a connection tells Redis it is (``CLIENT SETINFO``), resolved once: without it, each
new connection read redis-py's version from the installed package's metadata (~340 µs of CPU
a connection, paid in the bursts that grow a pool)."""


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """What a cluster URL says: seed nodes and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    def node_url(self, host: str, port: int) -> str:
        """A single-server URL of one node (for connections pinned to it)."""
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password}@"
        return f"{'rediss' if self.ssl else 'redis'}://{auth}{host}:{port}/0"


def cluster_address(url: str) -> ClusterAddress | None:
    """The cluster a ``redis+cluster://`` URL names; ``None`` for a single-server URL."""
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES:
        return None
    parts = urlsplit(f"redis://{rest}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a cluster URL lists host:port pairs, not {item!r}")
        nodes.append((host, int(port)))
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a cluster has only database 0")
    return ClusterAddress(
        tuple(nodes),
        unquote(username) or None,
        unquote(password) if userinfo else None,
        CLUSTER_SCHEMES[scheme],
    )


def is_cluster(url: str) -> bool:
    return cluster_address(url) is not None


def retry_options() -> dict[str, Any]:
    """Connection options that retry a command on a fresh connection (FastStream brokers too)."""
    return {
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=4),
        "retry_on_error": [ConnectionError, TimeoutError],
    }


def _replacement_character(error: UnicodeError) -> tuple[str | bytes, int]:
    if isinstance(error, UnicodeEncodeError):  # UTF-8's encoder takes bytes or ASCII text
        return "\ufffd".encode() * (error.end - error.start), error.end
    if isinstance(error, UnicodeDecodeError):
        return "\ufffd", error.end
    raise error


PROBE_TIMEOUT_S = 2.0
"""How long a health probe or a metrics scrape waits for Redis: a client's own timeouts and
retries add up to ~25 s against a Redis that stopped answering, past any probe's patience."""

ENCODING_ERRORS = "echotune-replace"
"""Text UTF-8 cannot carry (half a surrogate pair) is sent as U+FFFD, and bytes that are not
UTF-8 are read as U+FFFD: raising instead failed every later try of the same write (a
worker's append round was retried forever)."""
codecs.register_error(ENCODING_ERRORS, _replacement_character)


def create_redis(
    url: str,
    *,
    max_connections: int = 64,
    timeout: float = 10.0,
    socket_timeout: float | None = 5.0,
) -> Redis:
    """A client whose pool waits (``timeout``) for a free connection instead of failing.

    ``socket_timeout`` must exceed the longest blocking command sent through the client.
    Commands (pipelines too) are retried on a fresh connection after a connection error,
    so a restarted Redis is picked up without a failed request; a write whose reply was
    lost may then be applied twice (a rare duplicate, never a loss).

    For a cluster URL: a ``RedisCluster`` (typed as ``Redis``: it offers the same commands;
    pipelines are split by node, never transactional across slots). It follows ``MOVED`` and
    ``ASK`` and re-reads the slot map after a failover.
    """
    if (cluster := cluster_address(url)) is not None:
        return cast(Redis, _create_cluster(cluster, socket_timeout=socket_timeout))
    pool = QuickPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=socket_timeout,
        decode_responses=True,
        encoding_errors=ENCODING_ERRORS,
        driver_info=DRIVER_INFO,
        **retry_options(),
    )
    pool.connection_class = timed_sends(pool.connection_class)
    return Redis(connection_pool=pool)


class _TimedSend(AbstractConnection):
    """Sends under ``asyncio.timeout``, armed only when the socket cannot take the bytes.

    redis-py sends every command through ``asyncio.wait_for`` when a socket timeout is set:
    a new task per command (~15 % of a round trip's client CPU, issue 15), and on Python
    3.11 a cancellation that arrives as the send completes is dropped.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        if (writer := self._writer) is None:
            raise ConnectionError("Connection closed by server.")
        try:
            writer.writelines([command] if isinstance(command, bytes) else command)
            if not writer.transport.get_write_buffer_size():
                await writer.drain()  # all sent: reports a lost connection, never waits
                return
            async with asyncio.timeout(self.socket_timeout):
                await writer.drain()
        except builtins.TimeoutError:  # redis' TimeoutError is a name of this module
            await self.disconnect(nowait=True)
            raise TimeoutError("Timeout writing to socket") from None
        except OSError as error:
            await self.disconnect(nowait=True)
            raise ConnectionError(f"Error while writing to socket: {error!r}") from error
        except BaseException:
            await self.disconnect(nowait=True)  # a partial send leaves the connection unusable
            raise


_timed: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def timed_sends(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` sending as :class:`_TimedSend` does."""
    if connection_class not in _timed:
        name = f"Timed{connection_class.__name__}"
        _timed[connection_class] = type(name, (_TimedSend, connection_class), {})
    return _timed[connection_class]


async def ensure_group(redis: Redis, stream: str, group: str) -> bool:
    """Create ``group`` on ``stream`` at id ``0`` (``MKSTREAM``) unless it exists; whether it
    was created now. At ``0``, entries written before any consumer started are delivered too
    (FastStream would create a missing group at ``$`` and skip them)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


def _create_cluster(cluster: ClusterAddress, *, socket_timeout: float | None) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster.nodes],
        username=cluster.username,
        password=cluster.password,
        ssl=cluster.ssl,
        max_connections=CLUSTER_CONNECTIONS_PER_NODE,
        socket_timeout=socket_timeout,
        decode_responses=True,
        encoding_errors=ENCODING_ERRORS,
        driver_info=DRIVER_INFO,
        **retry_options(),
    )


class _WaitingPoolState(RedisConnectionState):
    """The broker's connections come from a pool that waits for a free one.

    FastStream builds redis-py's plain pool, which refuses a command past 100 in flight
    (``MaxConnectionsError``): a burst of chat starts, acks or telemetry failed instead."""

    async def connect(self) -> Redis:
        pool = QuickPool(
            max_connections=BROKER_CONNECTIONS,
            timeout=BROKER_POOL_WAIT_S,
            **{"driver_info": DRIVER_INFO, **self._options},
        )
        self._client = Redis.from_pool(pool)
        self._connected = True
        return self._client


class _WaitingBroker(RedisBroker):
    def _make_connection_state(
        self, connection_options: dict[str, Any], kwargs: dict[str, Any]
    ) -> RedisConnectionState:
        return _WaitingPoolState(connection_options)


def create_broker(url: str, **options: Any) -> RedisBroker:
    """A FastStream broker for ``url`` (``RedisClusterBroker`` on a cluster), retrying commands."""
    if (cluster := cluster_address(url)) is None:
        return _WaitingBroker(
            url, socket_timeout=BROKER_SOCKET_TIMEOUT_S, **retry_options(), **options
        )
    (host, port), *_ = cluster.nodes
    return RedisClusterBroker(
        cluster.node_url(host, port).removesuffix("/0"),
        startup_nodes=list(cluster.nodes),
        ssl=cluster.ssl,
        max_connections=CLUSTER_CONNECTIONS_PER_NODE,
        socket_timeout=BROKER_SOCKET_TIMEOUT_S,
        **retry_options(),
        **options,
    )

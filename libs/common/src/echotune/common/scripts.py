"""Lua scripts called by SHA, loaded on first use and again after Redis forgot them; script
calls and pipelines sent packed by hand on a single Redis (``resp.py``).

redis-py's command and pipeline layers (retry wrapper, a timed read per reply, callbacks,
observability hooks) cost more per call than the round trip's own packing and parsing: these
run for every answer (issue 15). The replies are the same: redis-py's response callbacks are
applied as its pipeline applies them; what this path does not cover (a cluster, a
transaction, options that change how a reply is read, arguments redis-py's encoder refuses)
goes through redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from echotune.common import replica_wait, resp

Arg = str | bytes | int | float


class Script:
    """One Lua script: ``EVALSHA`` directly or queued in a pipeline; ``NOSCRIPT`` reloads it.

    Unlike redis-py's ``register_script``, a pipeline carrying it costs no extra
    ``SCRIPT EXISTS`` round trip: scripts are assumed loaded, and reloaded when Redis
    answers ``NOSCRIPT`` (a restart, a failover, ``SCRIPT FLUSH``).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: list[str], args: list[Arg]) -> Any:
        if isinstance(redis, RedisCluster):
            try:
                return await redis.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                await redis.script_load(self.source)
                return await redis.evalsha(self.sha, len(keys), *keys, *args)
        packed = self.packed(keys, args)
        [reply] = await resp.send(redis, packed, 1)
        if isinstance(reply, NoScriptError):
            await redis.script_load(self.source)
            [reply] = await resp.send(redis, packed, 1)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def replicated(
        self,
        redis: Redis,
        keys: list[str],
        args: list[Arg],
        replicas: int,
        wait_ms: int,
        max_ms: int,
    ) -> tuple[Any, int]:
        """Call it, then ``WAIT`` on the same connection until ``replicas`` replicas hold its
        writes or ``wait_ms`` passed, and again while enough are online (``replica_wait``),
        ``max_ms`` in all; (its reply, how many replicas hold them).

        Only for a script that tells its own retry apart and writes again when it does (a
        ``WAIT`` after a call that wrote nothing waits for nothing on Redis 7.2+ and Valkey).
        On a cluster it goes to the slot's primary on one of its connections; a moved slot or
        a lost connection (a failover) refreshes the slot map and sends it again, and a
        cluster that stays away is a ``ConnectionError`` (as a single Redis's)."""
        call = self.packed(keys, args)
        deadline = asyncio.get_running_loop().time() + max_ms / 1000
        waiting = _Waiting(replicas, wait_ms, deadline)
        failures, evaluated = 0, False
        while True:
            try:
                if isinstance(redis, RedisCluster):
                    reply, acked = await _on_primary(redis, keys[0], call, waiting)
                else:
                    async with resp.pooled(redis) as connection:
                        reply, acked = await waiting.held(connection, call)
                if isinstance(reply, NoScriptError) and not evaluated:
                    evaluated = True  # EVAL runs it and caches it (it never answers NOSCRIPT)
                    call = resp.command("EVAL", self.source, len(keys), *keys, *args)
                    continue
                if isinstance(reply, _ELSEWHERE):
                    raise reply
            except _RESENT as exc:
                failures += 1
                if not isinstance(redis, RedisCluster):
                    raise
                if failures >= _ATTEMPTS:
                    raise RedisConnectionError(f"not written with its wait: {exc!r}") from exc
                await _refresh(redis, keys[0], failures)
                continue
            if isinstance(reply, Exception):
                raise reply
            return reply, acked

    def packed(self, keys: list[str], args: list[Arg]) -> bytes:
        """A call in RESP, for :func:`execute_packed`."""
        return resp.command("EVALSHA", self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Pipeline, keys: list[str], args: list[Arg]) -> None:
        """Add a call to ``pipe``; run the pipeline with :func:`execute`."""
        # Not pipe.evalsha: a cluster pipeline refuses it, while the raw command is routed
        # by its keys' slot like any other.
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


_ATTEMPTS = 5
"""Sends of a replicated call on a cluster, ~2.5 s of backoff apart in all (a failover)."""
_ELSEWHERE = (MovedError, AskError, TryAgainError, ClusterDownError)
"""A cluster's replies that say: the slot is served elsewhere, or later."""
_RESENT = (RedisConnectionError, RedisTimeoutError, RedisClusterException, *_ELSEWHERE)


async def _on_primary(
    redis: RedisCluster, key: str, call: bytes, waiting: _Waiting
) -> tuple[Any, int]:
    """``waiting.held`` on one of ``key``'s primary's connections."""
    await redis.initialize()  # the slot map (a no-op once known)
    node = redis.get_node_from_key(key)
    if node is None:
        raise SlotNotCoveredError(f"no primary serves {key!r}")
    connection = node.acquire_connection()
    try:
        await node.disconnect_if_needed(connection)  # marked stale by a slot map refresh
        return await waiting.held(connection, call)
    finally:
        node.release(connection)


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A replicated call's wait: for ``replicas``, ``wait_ms`` a time, until ``deadline``."""

    replicas: int
    wait_ms: int
    deadline: float

    async def held(self, connection: AbstractConnection, call: bytes) -> tuple[Any, int]:
        """``call``, then its wait on ``connection``; (its reply, replicas holding it). A
        connection lost while waiting again sends the call again (it writes again, so that
        the new connection has a write to wait for)."""
        wait = replica_wait.commands(self.replicas, self.wait_ms)
        while True:
            reply, acked, role = await resp.exchange(connection, call + wait, 3)
            if isinstance(reply, Exception):
                return reply, 0
            again = functools.partial(resp.exchange, connection, retry=False)
            try:
                held = await replica_wait.wait_longer(
                    again, acked, role, self.replicas, self.wait_ms, self.deadline
                )
            except (RedisConnectionError, RedisTimeoutError):
                continue
            return reply, held.holding


async def _refresh(redis: RedisCluster, key: str, failures: int) -> None:
    """After a backoff, let the cluster client learn where ``key``'s slot is served now (its
    own redirects and retries); still failing, the next send says so."""
    await asyncio.sleep(min(0.1 * 2**failures, 1.0))
    with contextlib.suppress(RedisError, RedisClusterException):
        await redis.exists(key)


async def load_all(redis: Redis, scripts: Sequence[Script]) -> None:
    """Load ``scripts`` (on every primary of a cluster: one may be asked any of them)."""
    if isinstance(redis, RedisCluster):  # SCRIPT LOAD goes to all primaries, not pipelined
        for script in scripts:
            await redis.script_load(script.source)
        return
    async with redis.pipeline(transaction=False) as pipe:
        for script in scripts:
            pipe.script_load(script.source)
        await pipe.execute()


def _queued(pipe: Pipeline) -> list[tuple[Any, ...]]:
    """The arguments of each command queued in ``pipe`` (a cluster pipeline keeps its own)."""
    if isinstance(pipe, ClusterPipeline):
        return [command.args for command in pipe._execution_strategy._command_queue]
    return [args for args, _ in pipe.command_stack]


async def execute(redis: Redis, pipe: Pipeline, scripts: list[Script | None]) -> list[Any]:
    """Run ``pipe`` (``scripts[i]``: the script of command ``i``, else ``None``).

    A script call answered ``NOSCRIPT`` is loaded and run again on its own; other errors are
    returned in place, as with ``raise_on_error=False``.
    """
    commands = _queued(pipe)
    results: list[Any]
    if _packable(pipe):
        results = await _send_packed(redis, pipe)
    else:
        results = await pipe.execute(raise_on_error=False)
    for index, result in enumerate(results):
        script = scripts[index] if index < len(scripts) else None
        if isinstance(result, NoScriptError) and script is not None:
            args = commands[index]  # ("EVALSHA", sha, numkeys, *keys, *args)
            numkeys = int(args[2])
            keys = [str(k) for k in args[3 : 3 + numkeys]]
            rest: list[Arg] = [a if isinstance(a, bytes) else str(a) for a in args[3 + numkeys :]]
            results[index] = await script(redis, keys, rest)
    return results


_ENCODABLE = frozenset({str, bytes, int, float})
"""Argument types packed by hand as redis-py's encoder packs them (exactly: not ``bool``)."""


def _packable(pipe: Pipeline) -> bool:
    """Whether ``pipe``'s commands may be sent packed by hand (see the module's docstring)."""
    if isinstance(pipe, ClusterPipeline) or not pipe.command_stack:
        return False
    if pipe.is_transaction or pipe.explicit_transaction or pipe.watching or pipe.scripts:
        return False
    for args, options in pipe.command_stack:
        if NEVER_DECODE in options or EMPTY_RESPONSE in options:
            return False
        if not all(type(arg) in _ENCODABLE for arg in args):
            return False
    return True


async def _send_packed(redis: Redis, pipe: Pipeline) -> list[Any]:
    """Send ``pipe``'s commands in one round trip; the replies as its ``execute`` gives them
    with ``raise_on_error=False``."""
    stack, callbacks = pipe.command_stack, pipe.response_callbacks
    packed = b"".join([resp.command(*args[0].split(), *args[1:]) for args, _ in stack])
    replies = await resp.send(redis, packed, len(stack))
    await pipe.reset()  # type: ignore[no-untyped-call]
    results: list[Any] = []
    for (args, options), reply in zip(stack, replies, strict=True):
        callback = callbacks.get(args[0])
        if callback is not None and not isinstance(reply, Exception):
            reply = callback(reply, **{k: v for k, v in options.items() if k != "keys"})
            if inspect.isawaitable(reply):
                reply = await reply
        results.append(reply)
    return results


async def execute_packed(
    redis: Redis,
    script: Script,
    calls: Sequence[tuple[list[str], list[Arg]]],
    own: resp.OwnConnection | None = None,
) -> list[Any]:
    """Call ``script`` once per (keys, args) in one round trip, packed by hand (single-node
    Redis), on ``own`` connection if given; as :func:`execute`, ``NOSCRIPT`` reloads it and
    other errors come back in place."""
    packed = b"".join([script.packed(keys, args) for keys, args in calls])
    if own is not None:
        results = await own.send(packed, len(calls))
    else:
        results = await resp.send(redis, packed, len(calls))
    for index, result in enumerate(results):
        if isinstance(result, NoScriptError):
            results[index] = await script(redis, *calls[index])
    return results

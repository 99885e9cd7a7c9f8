"""Lua scripts called by SHA, loaded on first use and again after Redis forgot them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import NoScriptError

from echotune.common import resp

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
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    def packed(self, keys: list[str], args: list[Arg]) -> bytes:
        """A call in RESP, for :func:`execute_packed`."""
        return resp.command("EVALSHA", self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Pipeline, keys: list[str], args: list[Arg]) -> None:
        """Add a call to ``pipe``; run the pipeline with :func:`execute`."""
        # Not pipe.evalsha: a cluster pipeline refuses it, while the raw command is routed
        # by its keys' slot like any other.
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


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
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for index, result in enumerate(results):
        script = scripts[index] if index < len(scripts) else None
        if isinstance(result, NoScriptError) and script is not None:
            args = commands[index]  # ("EVALSHA", sha, numkeys, *keys, *args)
            numkeys = int(args[2])
            keys = [str(k) for k in args[3 : 3 + numkeys]]
            rest: list[Arg] = [a if isinstance(a, bytes) else str(a) for a in args[3 + numkeys :]]
            results[index] = await script(redis, keys, rest)
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

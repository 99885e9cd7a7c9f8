"""Lua scripts called by SHA, loaded on first use and again after Redis forgot them."""

from __future__ import annotations

import hashlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

Arg = str | int | float


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

    def queue(self, pipe: Pipeline, keys: list[str], args: list[Arg]) -> None:
        """Add a call to ``pipe``; run the pipeline with :func:`execute`."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)


async def execute(redis: Redis, pipe: Pipeline, scripts: list[Script | None]) -> list[Any]:
    """Run ``pipe`` (``scripts[i]``: the script of command ``i``, else ``None``).

    A script call answered ``NOSCRIPT`` is loaded and run again on its own; other errors are
    returned in place, as with ``raise_on_error=False``.
    """
    commands = list(pipe.command_stack)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for index, result in enumerate(results):
        script = scripts[index] if index < len(scripts) else None
        if isinstance(result, NoScriptError) and script is not None:
            args = commands[index][0]  # ("EVALSHA", sha, numkeys, *keys, *args)
            numkeys = int(args[2])
            keys = [str(k) for k in args[3 : 3 + numkeys]]
            rest: list[Arg] = [str(a) for a in args[3 + numkeys :]]
            results[index] = await script(redis, keys, rest)
    return results

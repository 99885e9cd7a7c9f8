"""`make dev`: the whole system on this machine, no Docker needed; Ctrl-C stops it all.

Redis comes from ECHOTUNE_REDIS_URL if set, else a local server process is started (with
ECHOTUNE_REDIS_CLUSTER=1: a local Redis Cluster of 3 primaries and 3 replicas); MongoDB
(for the telemetry writer) from ECHOTUNE_MONGODB_URL if set, else a SecantusDB process. With
ECHOTUNE_LOCAL_MODEL=1 (`make dev-local`) a local model answers too (deploy/local/local_model.py).

Ctrl-C at any moment stops every process started so far, services first, then the local model,
MongoDB and Redis. Only the first SIGINT/SIGTERM counts: `uv run` forwards Ctrl-C to its child a
second time, and a second press must not cut the clean-up short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable
from typing import TypeVar

from deploy.local import local_model
from deploy.local.processes import (
    ServiceProcess,
    start_analytics,
    start_gateway,
    start_telemetry,
    start_worker,
)
from deploy.local.servers import (
    RedisClusterServers,
    RedisServer,
    SecantusServer,
    wanted_cluster,
)
from echotune.gateway.auth.keys import PREFIX, parse_key_id

HOST = os.environ.get("ECHOTUNE_DEV_HOST", "127.0.0.1")
PORT = int(os.environ.get("ECHOTUNE_DEV_PORT", "8080"))
ANALYTICS_PORT = int(os.environ.get("ECHOTUNE_DEV_ANALYTICS_PORT", "8083"))
TELEMETRY_PORT = int(os.environ.get("ECHOTUNE_DEV_TELEMETRY_PORT", "8091"))
T = TypeVar("T")


class BadDevKey(ValueError):
    """ECHOTUNE_DEV_API_KEY is not an echotune API key."""


def dev_api_key() -> str:
    """ECHOTUNE_DEV_API_KEY if set, else a fresh key: the dev stack is never open.

    A chosen key must have the shape of every key (``et_<id>_<secret>``): the gateway stores it
    under its id like any other key, and the same variable configures the Docker stack."""
    chosen = os.environ.get("ECHOTUNE_DEV_API_KEY")
    if not chosen:
        return f"{PREFIX}dev{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"
    if parse_key_id(chosen) is None:
        raise BadDevKey(
            f"ECHOTUNE_DEV_API_KEY must look like {PREFIX}<id>_<secret> "
            f"(e.g. {PREFIX}me_{secrets.token_urlsafe(12)}); unset it to get a generated key"
        )
    return chosen


async def _in_thread(start: Callable[[], T]) -> T:
    """Run a blocking start in a thread. A cancel (Ctrl-C) still waits for it to end, so that
    whatever it started is known, and stopped, before the clean-up."""
    task = asyncio.ensure_future(asyncio.to_thread(start))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # e.g. the server got the same Ctrl-C while forking: nothing to add
        raise


class DevStack:
    """Everything `make dev` runs; :meth:`stop` stops what was started, in reverse order."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.env = {"ECHOTUNE_DEV_API_KEY": api_key}
        self.urls: dict[str, str] = {}
        self.services: list[ServiceProcess] = []
        self.servers: list[RedisServer | RedisClusterServers | SecantusServer] = []
        self.dirs = contextlib.ExitStack()

    async def start(self) -> None:
        """Start in dependency order; each part is registered before it is waited for."""
        await self._infrastructure()
        if local_model.wanted():
            await self._local_model()
        analytics, self.urls["analytics"] = await start_analytics(
            self.env, host=HOST, port=ANALYTICS_PORT
        )
        self.services.append(analytics)
        self.env["ECHOTUNE_GATEWAY_ANALYTICS_URL"] = self.urls["analytics"]
        gateway, self.urls["gateway"] = await start_gateway(self.env, host=HOST, port=PORT)
        self.services.append(gateway)
        worker = await start_worker(self.env)
        self.services.append(worker)
        self.urls["worker"] = worker.url
        telemetry, self.urls["telemetry"] = await start_telemetry(
            self.env, host=HOST, port=TELEMETRY_PORT
        )
        self.services.append(telemetry)
        for proc in self.services:
            proc.echo = True

    async def _infrastructure(self) -> None:
        redis_url = os.environ.get("ECHOTUNE_REDIS_URL")
        if not redis_url:
            workdir = self.dirs.enter_context(tempfile.TemporaryDirectory())
            redis = RedisClusterServers(workdir) if wanted_cluster() else RedisServer(workdir)
            self.servers.append(redis)
            redis_url = await _in_thread(redis.start)
            if wanted_cluster() and "ECHOTUNE_REDIS_WAIT_REPLICAS" not in os.environ:
                self.env["ECHOTUNE_REDIS_WAIT_REPLICAS"] = "1"  # every primary has a replica
        mongodb_url = os.environ.get("ECHOTUNE_MONGODB_URL")
        if not mongodb_url:
            storage = os.environ.get("ECHOTUNE_DEV_MONGO_DIR") or self.dirs.enter_context(
                tempfile.TemporaryDirectory()
            )
            mongo = SecantusServer(storage)
            self.servers.append(mongo)
            mongodb_url = await _in_thread(mongo.start) + "/echotune"
        self.urls["redis"], self.urls["mongodb"] = redis_url, mongodb_url
        self.env |= {"ECHOTUNE_REDIS_URL": redis_url, "ECHOTUNE_MONGODB_URL": mongodb_url}

    async def _local_model(self) -> None:
        """The local model server, offered as provider ``local`` (the default unless set)."""
        server, base_url = await local_model.start_server()
        self.services.append(server)
        self.urls["local model"] = base_url
        try:
            configured = json.loads(os.environ.get("ECHOTUNE_PROVIDERS") or "[]")
        except ValueError as exc:
            raise RuntimeError(f"ECHOTUNE_PROVIDERS is not a JSON list: {exc}") from None
        others = [p for p in configured if p.get("name") != local_model.PROVIDER]
        self.env["ECHOTUNE_PROVIDERS"] = json.dumps([*others, local_model.provider(base_url)])
        if not os.environ.get("ECHOTUNE_DEFAULT_PROVIDER"):
            self.env["ECHOTUNE_DEFAULT_PROVIDER"] = local_model.PROVIDER
        if not os.environ.get("ECHOTUNE_WORKER_CONCURRENCY"):
            # the server answers one at a time: more jobs wait in the Redis stream, not in it
            self.env["ECHOTUNE_WORKER_CONCURRENCY"] = str(local_model.CONCURRENCY)

    def exits(self) -> list[asyncio.Task[int]]:
        """One task per running service that ends when the service does."""
        return [asyncio.create_task(p.proc.wait()) for p in self.services if p.proc]

    def exited(self) -> list[str]:
        """The services that ended by themselves, with their exit codes."""
        return [
            f"{p.name} ({p.proc.returncode})"
            for p in self.services
            if p.proc is not None and p.proc.returncode is not None
        ]

    async def stop(self) -> None:
        for proc in reversed(self.services):
            await proc.stop()
        for server in reversed(self.servers):
            server.stop()
        self.dirs.close()

    def key_command(self) -> str:
        """How to make another key in this stack's Redis."""
        redis = shlex.quote(self.urls["redis"])
        return f"ECHOTUNE_REDIS_URL={redis} .venv/bin/echotune-apikey create --user alice"

    def banner(self) -> str:
        url, key = self.urls["gateway"], self.api_key
        local = ""
        if "local model" in self.urls:
            local = (
                f"  local     {self.urls['local model']}   (llama.cpp, model "
                f"{local_model.model_name()}: provider `{local_model.PROVIDER}`)\n"
            )
        return f"""
echotune is running
  gateway   {url}   (API docs: {url}/docs, web UI: {url}/)
  API key   {key}   (user `dev`; set ECHOTUNE_DEV_API_KEY to choose it)
  more keys {self.key_command()}
  worker    {self.urls["worker"]}/metrics   (and /healthz)
  telemetry {self.urls["telemetry"]}/metrics
  analytics {self.urls["analytics"]}   (API docs: /docs; through the gateway: {url}/api/analytics/…)
  redis     {self.urls["redis"]}
  mongodb   {self.urls["mongodb"]}
{local}try it:
  curl -N -H 'Authorization: Bearer {key}' \\
    '{url}/api/chat/stream?message=Recommend+something+for+a+rainy+evening'
Ctrl-C stops everything.
"""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """From here on Ctrl-C and SIGTERM do nothing. The loop's handlers go while the signals
    are blocked: left to ``asyncio.run``, they are removed only after the loop's wake-up pipe
    is closed, and a Ctrl-C in between printed a traceback (writing to a closed fd; seen in
    CI), or after them raised ``KeyboardInterrupt`` (the handler they restore)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)  # one that came meanwhile is discarded
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


async def serve(api_key: str) -> int:
    """Start the stack, wait for Ctrl-C (or a service that dies), stop it; the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)  # later signals set it again: nothing happens
    print("starting echotune… (Ctrl-C stops it)", flush=True)
    stack = DevStack(api_key)
    starting = asyncio.create_task(stack.start())
    stopping = asyncio.create_task(stop.wait())
    code = 0
    try:
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a start that failed raises here
            print(stack.banner(), flush=True)
            exits = stack.exits()
            await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                print(f"make dev: {', '.join(stack.exited())} exited", file=sys.stderr)
                code = 1
    except (RuntimeError, local_model.LocalModelUnavailable) as exc:
        if not stop.is_set():  # else a child got the same Ctrl-C while it was being forked
            print(f"make dev: {exc}", file=sys.stderr, flush=True)
            code = 1
    finally:
        print("stopping…", flush=True)
        starting.cancel()
        stopping.cancel()
        await asyncio.wait([starting, stopping])
        if not starting.cancelled():
            starting.exception()  # reported above, or superseded by Ctrl-C
        try:
            await stack.stop()
            print("stopped", flush=True)  # the servers take a few seconds (SecantusDB ~2 s)
        finally:
            ignore_stop_signals(loop)
    return code


def main() -> None:
    try:
        api_key = dev_api_key()
    except BadDevKey as exc:
        print(f"make dev: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(asyncio.run(serve(api_key)))


if __name__ == "__main__":
    main()

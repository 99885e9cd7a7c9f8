"""`make dev`: the whole system on this machine, no Docker needed; Ctrl-C stops it all.

Redis comes from ECHOTUNE_REDIS_URL if set, else a local server process is started; MongoDB
(for the telemetry writer) from ECHOTUNE_MONGODB_URL if set, else a SecantusDB process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal

from deploy.local.processes import (
    ServiceProcess,
    start_analytics,
    start_gateway,
    start_telemetry,
    start_worker,
)
from deploy.local.servers import local_mongo, local_redis

HOST = os.environ.get("ECHOTUNE_DEV_HOST", "127.0.0.1")
PORT = int(os.environ.get("ECHOTUNE_DEV_PORT", "8080"))
ANALYTICS_PORT = int(os.environ.get("ECHOTUNE_DEV_ANALYTICS_PORT", "8083"))
TELEMETRY_PORT = int(os.environ.get("ECHOTUNE_DEV_TELEMETRY_PORT", "8091"))


def dev_api_key() -> str:
    """ECHOTUNE_DEV_API_KEY if set, else a fresh key: the dev stack is never open."""
    return os.environ.get("ECHOTUNE_DEV_API_KEY") or (
        f"et_dev{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"
    )


async def run(redis_url: str, mongodb_url: str) -> None:
    api_key = dev_api_key()
    env = {
        "ECHOTUNE_REDIS_URL": redis_url,
        "ECHOTUNE_MONGODB_URL": mongodb_url,
        "ECHOTUNE_DEV_API_KEY": api_key,
    }
    processes: list[ServiceProcess] = []
    try:
        analytics, analytics_url = await start_analytics(env, host=HOST, port=ANALYTICS_PORT)
        processes.append(analytics)
        env["ECHOTUNE_GATEWAY_ANALYTICS_URL"] = analytics_url
        gateway, url = await start_gateway(env, host=HOST, port=PORT)
        processes.append(gateway)
        processes.append(await start_worker(env))
        telemetry, telemetry_url = await start_telemetry(env, host=HOST, port=TELEMETRY_PORT)
        processes.append(telemetry)
        for proc in processes:
            proc.echo = True
        print(_banner(url, redis_url, telemetry_url, mongodb_url, api_key), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        exits = [asyncio.create_task(p.proc.wait()) for p in processes if p.proc]
        await asyncio.wait(
            [asyncio.create_task(stop.wait()), *exits], return_when="FIRST_COMPLETED"
        )
    finally:
        print("stopping…", flush=True)
        for proc in reversed(processes):
            await proc.stop()


def _banner(url: str, redis_url: str, telemetry_url: str, mongodb_url: str, key: str) -> str:
    return f"""
echotune is running
  gateway   {url}   (API docs: {url}/docs, web UI: {url}/)
  API key   {key}   (user `dev`; set ECHOTUNE_DEV_API_KEY to choose it)
  telemetry {telemetry_url}/metrics
  redis     {redis_url}
  mongodb   {mongodb_url}
try it:
  curl -N -H 'Authorization: Bearer {key}' \\
    '{url}/api/chat/stream?message=Recommend+something+for+a+rainy+evening'
Ctrl-C stops everything.
"""


def main() -> None:
    with contextlib.ExitStack() as stack:
        redis_url = os.environ.get("ECHOTUNE_REDIS_URL") or stack.enter_context(local_redis())
        mongodb_url = os.environ.get("ECHOTUNE_MONGODB_URL") or (
            stack.enter_context(local_mongo(os.environ.get("ECHOTUNE_DEV_MONGO_DIR"))) + "/echotune"
        )
        asyncio.run(run(redis_url, mongodb_url))


if __name__ == "__main__":
    main()

"""A worker for tests: its settings, and the worker started with its real broker."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from faststream.redis import RedisBroker

from echotune.worker.app import create_app
from echotune.worker.resources import Worker, open_worker
from echotune.worker.settings import WorkerSettings


def demo(pace_ms: int) -> dict[str, Any]:
    """The offline demo provider, answering at ``pace_ms`` a token."""
    return {"name": "demo", "kind": "demo", "models": ["demo-1"], "token_pace_ms": pace_ms}


def worker_settings(redis_url: str, provider: dict[str, Any], **fields: Any) -> WorkerSettings:
    """A worker of its own namespace answering with ``provider``; no MongoDB to wait for."""
    return WorkerSettings(
        redis_url=redis_url,
        mongodb_url="mongodb://127.0.0.1:1/none",
        namespace=f"t{uuid.uuid4().hex[:10]}",
        providers=[provider],
        default_provider="demo",
        context_timeout_s=0.05,
        profile_timeout_s=0.05,
        **fields,
    )


@contextlib.asynccontextmanager
async def started_worker(settings: WorkerSettings) -> AsyncIterator[tuple[Worker, RedisBroker]]:
    """The worker with its broker started: its subscribers read the jobs stream."""
    broker = create_app(settings).broker
    async with open_worker(settings, broker) as worker:
        broker.context.set_global("worker", worker)
        await broker.start()
        try:
            yield worker, broker
        finally:  # as the worker's shutdown does: a test that failed leaves no job running
            await worker.pool.drain(0)
            await broker.stop()

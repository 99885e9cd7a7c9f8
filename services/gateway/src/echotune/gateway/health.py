"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, Field

from echotune.common import job_queue
from echotune.common.redis import PROBE_TIMEOUT_S
from echotune.gateway.chat.service import WORKER_SEEN_S
from echotune.gateway.deps import RedisDep, SettingsDep
from echotune.web.errors import ApiError

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    status: str = Field(description="`ready`; `no_workers` when no worker was seen lately")
    workers: int = Field(description=f"Workers seen alive in the last {WORKER_SEEN_S:.0f} s")


@router.get("/healthz", summary="Liveness")
@router.head("/healthz", include_in_schema=False)  # load balancers probe with HEAD
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: Redis reachable; whether workers are alive")
async def readyz(redis: RedisDep, settings: SettingsDep) -> Readiness:
    """200 while Redis answers (chats are queued); ``workers`` says whether any will run."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            workers = await job_queue.workers_alive(redis, settings.keys, WORKER_SEEN_S)
    except TimeoutError as exc:
        why = f"Redis did not answer within {PROBE_TIMEOUT_S:g} s"
        raise ApiError(503, "redis_unavailable", why) from exc
    except Exception as exc:
        raise ApiError(503, "redis_unavailable", f"Redis is not reachable: {exc}") from exc
    return Readiness(status="ready" if workers else "no_workers", workers=workers)

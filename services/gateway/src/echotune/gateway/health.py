"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from echotune.gateway.deps import RedisDep
from echotune.gateway.errors import ApiError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: Redis reachable")
async def readyz(redis: RedisDep) -> dict[str, str]:
    try:
        await redis.ping()
    except Exception as exc:
        raise ApiError(503, "redis_unavailable", f"Redis is not reachable: {exc}") from exc
    return {"status": "ready"}

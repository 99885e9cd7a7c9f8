"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from echotune.analytics.deps import MongoClientDep, SettingsDep
from echotune.analytics.schemas import ERROR_RESPONSES
from echotune.web.errors import ApiError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
@router.head("/healthz", include_in_schema=False)  # load balancers probe with HEAD
async def healthz() -> dict[str, str]:
    """Always ok while the process runs."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: MongoDB answers a ping and the migration ran",
    responses={503: ERROR_RESPONSES[503]},
)
async def readyz(request: Request, client: MongoClientDep, settings: SettingsDep) -> dict[str, str]:
    """503 (JSON) while MongoDB cannot be reached or the startup migration has not finished."""
    await client.admin.command("ping")  # a connection failure answers 503 (errors.py)
    migration = request.app.state.migration
    if settings.migrate_on_start and not migration.done:
        detail = {"last_error": migration.last_error}
        raise ApiError(
            503, "migration_pending", "the startup migration has not finished", details=detail
        )
    return {"status": "ready", "mongodb": "ok"}

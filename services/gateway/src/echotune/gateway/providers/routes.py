"""Provider endpoints: list, quick-switch, health."""

from __future__ import annotations

from fastapi import APIRouter

from echotune.gateway.deps import AUTHENTICATED, ProviderServiceDep, UserIdDep
from echotune.gateway.providers.schemas import (
    HEALTH_RULE,
    HealthReport,
    ProviderList,
    Selection,
    SwitchRequest,
)

router = APIRouter(prefix="/api/providers", tags=["providers"], dependencies=AUTHENTICATED)


@router.get("", summary="Configured providers and the current selection")
async def list_providers(service: ProviderServiceDep, user_id: UserIdDep) -> ProviderList:
    return await service.list(user_id)


@router.post(
    "/switch",
    summary="Choose the provider and model new chats use",
    responses={409: {"description": "The provider's circuit breaker is open"}},
)
async def switch(body: SwitchRequest, service: ProviderServiceDep, user_id: UserIdDep) -> Selection:
    """Persisted per user (or as everyone's default), so it survives restarts."""
    return await service.switch(user_id, body.provider, body.model)


@router.get(
    "/health", summary="Breaker state and live figures per provider", description=HEALTH_RULE
)
async def health(service: ProviderServiceDep) -> HealthReport:
    return await service.health()

"""HTTP routes, one module per area; ``api_router`` gathers them."""

from __future__ import annotations

from fastapi import APIRouter

from echotune.analytics.deps import KNOWN_PARAMETERS_ONLY
from echotune.analytics.routes import conversations, health, insights, listening, providers

api_router = APIRouter(dependencies=KNOWN_PARAMETERS_ONLY)
api_router.include_router(health.router)
api_router.include_router(providers.router)
api_router.include_router(listening.router)
api_router.include_router(insights.router)
api_router.include_router(conversations.router)

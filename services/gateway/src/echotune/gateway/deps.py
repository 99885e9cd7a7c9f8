"""Annotated dependency aliases: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from echotune.common.providers import ProviderRegistry
from echotune.gateway.auth.service import Authenticator
from echotune.gateway.chat.service import ChatService
from echotune.gateway.providers.service import ProviderService
from echotune.gateway.settings import GatewaySettings


async def _settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def _redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


async def _chat_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


async def _provider_service(request: Request) -> ProviderService:
    service: ProviderService = request.app.state.providers
    return service


async def _registry(request: Request) -> ProviderRegistry:
    service: ProviderService = request.app.state.providers
    return service.registry


async def _authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


async def _user_id(request: Request) -> str:
    """The authenticated caller (``anonymous`` when authentication is switched off)."""
    auth: Authenticator = request.app.state.auth
    return await auth.user_of(request)


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
ChatServiceDep = Annotated[ChatService, Depends(_chat_service)]
ProviderServiceDep = Annotated[ProviderService, Depends(_provider_service)]
RegistryDep = Annotated[ProviderRegistry, Depends(_registry)]
UserIdDep = Annotated[str, Depends(_user_id)]
AuthDep = Annotated[Authenticator, Depends(_authenticator)]
AUTHENTICATED = [Depends(_user_id)]
"""Router dependencies of every protected router."""

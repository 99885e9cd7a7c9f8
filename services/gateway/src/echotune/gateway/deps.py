"""Annotated dependency aliases: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from echotune.gateway.chat.service import ChatService
from echotune.gateway.providers.service import ProviderService
from echotune.gateway.settings import GatewaySettings


def _settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def _redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


def _chat_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


def _provider_service(request: Request) -> ProviderService:
    service: ProviderService = request.app.state.providers
    return service


def _user_id() -> str:
    """The caller's user id; every caller is ``anonymous`` until authentication exists."""
    return "anonymous"


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
ChatServiceDep = Annotated[ChatService, Depends(_chat_service)]
ProviderServiceDep = Annotated[ProviderService, Depends(_provider_service)]
UserIdDep = Annotated[str, Depends(_user_id)]

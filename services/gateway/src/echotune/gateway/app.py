"""Gateway application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from faststream.redis import RedisBroker

from echotune.common.breaker import CircuitBreakers
from echotune.common.logs import configure_logging
from echotune.common.redis import create_redis
from echotune.gateway import health
from echotune.gateway.chat import routes as chat_routes
from echotune.gateway.openai_compat import routes as openai_routes
from echotune.gateway.providers import routes as provider_routes
from echotune.gateway.providers.service import ProviderService
from echotune.gateway.chat.relay import StreamRelay
from echotune.gateway.chat.service import ChatService
from echotune.gateway.errors import install_error_handlers
from echotune.gateway.requestid import RequestIdMiddleware
from echotune.gateway.settings import GatewaySettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    redis = create_redis(settings.redis_url)
    relay = StreamRelay(
        settings.redis_url,
        settings.keys,
        block_ms=settings.relay_block_ms,
        batch=settings.relay_batch,
    )
    broker = RedisBroker(settings.redis_url, logger=logging.getLogger("echotune.gateway.broker"))
    await broker.connect()
    await relay.start()
    breakers = CircuitBreakers(redis, settings.keys, settings.breaker.policy())
    providers = ProviderService(redis, settings.keys, settings.registry(), breakers)
    chat = ChatService(redis, relay, broker, providers, settings)
    keeper = asyncio.create_task(chat.keep_readers_alive(), name="reader-keeper")
    app.state.redis, app.state.relay = redis, relay
    app.state.chat, app.state.providers = chat, providers
    try:
        yield
    finally:
        keeper.cancel()
        await relay.stop()
        await broker.stop()
        await redis.aclose()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    configure_logging("gateway", settings.log_level)
    app = FastAPI(
        title="echotune gateway",
        version="0.1.0",
        description="Streaming LLM chat over Server-Sent Events.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(chat_routes.router)
    app.include_router(provider_routes.router)
    app.include_router(openai_routes.router)
    return app

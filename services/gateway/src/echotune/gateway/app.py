"""Gateway application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from echotune.common import heap, job_queue, tracing
from echotune.common.breaker import CircuitBreakers
from echotune.common.redis import create_broker, create_redis
from echotune.common.request_stream import RequestStreams
from echotune.gateway import analytics_docs, health, metrics, observability, proxy
from echotune.gateway.auth import routes as auth_routes
from echotune.gateway.auth.keys import ApiKeyStore
from echotune.gateway.auth.service import DEV_USER, Authenticator
from echotune.gateway.auth.sessions import SessionStore
from echotune.gateway.chat import routes as chat_routes
from echotune.gateway.chat.relay import StreamRelay
from echotune.gateway.chat.service import ChatService
from echotune.gateway.chat.upkeep import keep_streams_alive, trim_jobs
from echotune.gateway.errors import install_store_errors, render
from echotune.gateway.limits import ChatLimits
from echotune.gateway.metrics import GatewayMetrics
from echotune.gateway.openai_compat import routes as openai_routes
from echotune.gateway.providers import routes as provider_routes
from echotune.gateway.providers.service import ProviderService
from echotune.gateway.settings import GatewaySettings
from echotune.gateway.ui import routes as ui_routes
from echotune.web.app import Middleware, service_app
from echotune.web.bodylimit import BodySizeLimitMiddleware

ESCAPED_CHAR_BYTES = 12
"""The most a character takes in JSON: an astral one as two ``\\uXXXX`` escapes."""
log = logging.getLogger(__name__)


def warn_of_a_short_body_limit(settings: GatewaySettings) -> None:
    """A body limit a message within its own limit may not fit, JSON-escaped: said at start."""
    if settings.max_body_bytes < ESCAPED_CHAR_BYTES * settings.max_message_chars:
        log.warning(
            "MAX_BODY_BYTES %d is below %d × MAX_MESSAGE_CHARS (%d): a message within its "
            "limit may be refused as too large once JSON escapes it",
            settings.max_body_bytes,
            ESCAPED_CHAR_BYTES,
            settings.max_message_chars,
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    warn_of_a_short_body_limit(settings)
    keys = settings.keys
    redis = create_redis(settings.redis_url)
    streams = RequestStreams(
        redis,
        keys,
        request_ttl_s=int(settings.max_stream_s + settings.resume_window_s) + settings.key_grace_s,
        final_ttl_s=int(settings.resume_window_s) + settings.key_grace_s,
        reader_ttl_ms=int(settings.resume_window_s * 1000),
        wait_replicas=settings.redis_wait_replicas,
        wait_ms=settings.redis_wait_ms,
        wait_max_ms=settings.redis_wait_max_ms,
        on_unreplicated_final=app.state.metrics.unreplicated_finals.inc,
    )
    relay = StreamRelay(
        settings.redis_url,
        keys,
        block_ms=settings.relay_block_ms,
        batch=settings.relay_batch,
        round_s=settings.relay_round_ms / 1000,
        barrier=streams.read_barrier(
            settings.relay_wait_ms,
            on_unheld=app.state.metrics.unreplicated_reads.inc,
            on_held_back=app.state.metrics.held_back_reads.inc,
        ),
    )
    broker = create_broker(settings.redis_url, logger=logging.getLogger("echotune.gateway.broker"))
    await broker.connect()
    await job_queue.ensure_group(redis, keys)
    await relay.start()
    await streams.load_scripts()
    breakers = CircuitBreakers(redis, keys, settings.breaker.policy())
    providers = ProviderService(redis, keys, settings.registry(), breakers)
    limits = ChatLimits(
        redis,
        keys,
        per_user=settings.chat_starts_per_minute_user,
        per_ip=settings.chat_starts_per_minute_ip,
        open_streams=settings.max_open_streams_per_user,
        lapse_s=settings.resume_window_s * 2,
    )
    app.state.metrics.attach(redis, keys, breakers)
    chat = ChatService(
        redis, relay, broker, providers, limits, streams, settings, metrics=app.state.metrics
    )
    api_keys = ApiKeyStore(redis, keys)
    if settings.dev_api_key is not None:
        await api_keys.install(settings.dev_api_key.get_secret_value(), DEV_USER, "dev key")
    app.state.auth = Authenticator.from_settings(
        api_keys, SessionStore(redis, settings.keys), settings
    )
    app.state.analytics = httpx.AsyncClient(
        base_url=settings.analytics_url, timeout=settings.analytics_timeout_s
    )
    observability.instrument_clients(redis, app.state.analytics)
    background = [
        asyncio.create_task(keep_streams_alive(chat, settings.resume_window_s / 3)),
        asyncio.create_task(trim_jobs(redis, keys, settings.jobs_trim_s)),
        asyncio.create_task(app.state.analytics_docs.fetch_until_known(app.state.analytics)),
    ]
    app.state.redis, app.state.chat, app.state.providers = redis, chat, providers
    try:
        heap.settle()
        yield
    finally:
        for task in background:
            task.cancel()
        await app.state.analytics.aclose()
        await relay.stop()
        await broker.stop()
        await redis.aclose()
        tracing.shutdown()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    tracing.configure_tracing("echotune-gateway")
    middleware: list[Middleware] = [
        (BodySizeLimitMiddleware, {"max_bytes": settings.max_body_bytes, "render": render})
    ]
    if settings.cors_origins:
        cors = {
            "allow_origins": settings.cors_origins,
            "allow_credentials": True,
            "allow_methods": ["GET", "POST", "DELETE"],
            "allow_headers": ["Authorization", "Content-Type", "X-Request-Id", "Last-Event-ID"],
            "expose_headers": ["X-Request-Id"],
        }
        middleware.append((CORSMiddleware, cors))
    app = service_app(
        "gateway",
        settings,
        title="echotune gateway",
        description="Streaming LLM chat over Server-Sent Events.",
        lifespan=lifespan,
        render=render,
        middleware=middleware,
    )
    install_store_errors(app)
    app.state.metrics = GatewayMetrics(settings.registry())
    app.state.analytics_docs = analytics_docs.AnalyticsDocs()
    analytics_docs.install(app, app.state.analytics_docs)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(auth_routes.router)
    app.include_router(chat_routes.router)
    app.include_router(provider_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(ui_routes.router)
    app.include_router(proxy.router)
    observability.instrument_app(app)
    return app

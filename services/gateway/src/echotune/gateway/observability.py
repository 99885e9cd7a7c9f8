"""Tracing of the gateway with the maintained instrumentations (only when tracing is on).

FastAPI: one server span per HTTP request, covering the whole SSE response; its per-message
``send``/``receive`` spans are left out (one per frame would be per-token work). Redis: the
spans of the main client (the start path's round trips); the relay's connection, read once
per event, is not instrumented. httpx: the analytics pass-through.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from redis.asyncio import Redis

from echotune.common import tracing

UNTRACED_PATHS = "/healthz,/readyz,/metrics"


def instrument_app(app: FastAPI) -> None:
    if tracing.enabled():
        FastAPIInstrumentor.instrument_app(
            app, excluded_urls=UNTRACED_PATHS, exclude_spans=["receive", "send"]
        )


def instrument_clients(redis: Redis, http: httpx.AsyncClient) -> None:
    if tracing.enabled():
        RedisInstrumentor.instrument_client(redis)
        HTTPXClientInstrumentor.instrument_client(http)

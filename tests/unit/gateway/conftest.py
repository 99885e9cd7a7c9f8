"""The gateway's services in-process, with their lifespan, against a real Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI

from echotune.gateway.app import create_app
from echotune.gateway.settings import GatewaySettings

DEMO = {"name": "demo", "kind": "demo", "models": ["echotune-demo-1"], "token_pace_ms": 2}


@contextlib.asynccontextmanager
async def running_gateway(redis_url: str, **settings: Any) -> AsyncIterator[FastAPI]:
    """A gateway app whose lifespan is running (no HTTP server), in a fresh namespace."""
    app = create_app(
        GatewaySettings(
            redis_url=redis_url,
            namespace=f"t{uuid.uuid4().hex[:10]}",
            providers=[DEMO],
            default_provider="demo",
            auth_enabled=False,
            **{"heartbeat_s": 0.2, **settings},
        )
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def gateway(redis_server_url: str) -> AsyncIterator[FastAPI]:
    async with running_gateway(redis_server_url) as app:
        yield app

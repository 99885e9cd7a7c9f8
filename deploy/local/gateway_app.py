"""A gateway app with its lifespan running in this process (no HTTP server), in a namespace
of its own: for tests and in-process measurements (``deploy/bench/start_cost.py``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from echotune.gateway.app import create_app
from echotune.gateway.settings import GatewaySettings

DEMO = {"name": "demo", "kind": "demo", "models": ["echotune-demo-1"], "token_pace_ms": 2}


@contextlib.asynccontextmanager
async def running_gateway(redis_url: str, **settings: Any) -> AsyncIterator[FastAPI]:
    """The demo provider only, authentication off and a 0.2 s heartbeat unless ``settings``
    say otherwise."""
    defaults = {"providers": [DEMO], "default_provider": "demo", "auth_enabled": False}
    defaults |= {"heartbeat_s": 0.2, "namespace": f"t{uuid.uuid4().hex[:10]}"}
    app = create_app(GatewaySettings(redis_url=redis_url, **{**defaults, **settings}))
    async with app.router.lifespan_context(app):
        yield app

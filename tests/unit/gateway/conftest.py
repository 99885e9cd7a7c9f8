"""The gateway's services in-process, with their lifespan, against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from deploy.local.gateway_app import running_gateway


@pytest.fixture
async def gateway(redis_server_url: str) -> AsyncIterator[FastAPI]:
    async with running_gateway(redis_server_url) as app:
        yield app

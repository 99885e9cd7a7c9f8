"""Analytics fixtures: a fresh migrated database per test on the shared MongoDB server, and
the analytics app running in-process (lifespan included) behind an httpx client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.app import create_app
from echotune.analytics.migrations import migrate
from echotune.analytics.settings import AnalyticsSettings

Document = dict[str, Any]


def with_database(server_url: str, database: str) -> str:
    """``server_url`` pointing at ``database`` (query options such as authSource kept)."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@asynccontextmanager
async def running(settings: AnalyticsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, and a client talking to it in-process."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://analytics") as client,
    ):
        client.app = app  # type: ignore[attr-defined]
        yield client


@pytest.fixture
async def db(mongo_server_url: str) -> AsyncIterator[AsyncDatabase[Document]]:
    """A database of its own, migrated, dropped afterwards."""
    name = f"analytics_{uuid.uuid4().hex[:12]}"
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_server_url, tz_aware=True)
    database = client[name]
    await migrate(database)
    yield database
    await client.drop_database(name)
    await client.close()


@pytest.fixture
def settings(mongo_server_url: str, db: AsyncDatabase[Document]) -> AnalyticsSettings:
    """Settings of an app reading the test's database."""
    return AnalyticsSettings(
        mongodb_url=with_database(mongo_server_url, db.name), log_level="WARNING"
    )


@pytest.fixture
async def api(settings: AnalyticsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the analytics app on the test's database."""
    async with running(settings) as client:
        yield client


async def get_ok(api: httpx.AsyncClient, path: str, **params: Any) -> Document:
    """GET, assert 200, the JSON body."""
    response = await api.get(path, params=params)
    assert response.status_code == 200, response.text
    body: Document = response.json()
    return body

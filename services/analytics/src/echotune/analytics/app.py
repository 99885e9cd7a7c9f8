"""Analytics application factory.

Run with ``uvicorn echotune.analytics.app:create_app --factory --port 8083``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from echotune.analytics.errors import install_handlers
from echotune.analytics.migrations import migrate
from echotune.analytics.routes import api_router
from echotune.analytics.settings import AnalyticsSettings
from echotune.common.logs import configure_logging
from echotune.common.mongo import create_mongo, until_done
from echotune.web.requestid import RequestIdMiddleware

log = logging.getLogger("echotune.analytics")


@dataclass
class MigrationState:
    """Whether the startup migration has run, and why it has not yet."""

    done: bool = False
    last_error: str | None = None


async def migrate_until_done(db: AsyncDatabase[dict[str, Any]], state: MigrationState) -> None:
    """Run the migration, waiting (with back-off) while MongoDB fails."""

    def failed(exc: PyMongoError) -> None:
        state.last_error = str(exc)[:500]

    await until_done(lambda: migrate(db), "analytics migration", on_failure=failed)
    state.done, state.last_error = True, None
    log.info("migration done on database %s", db.name)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One MongoDB client for the process; the migration runs in the background."""
    settings: AnalyticsSettings = app.state.settings
    mongo = create_mongo(settings.mongodb_url, timeout_ms=settings.mongo_timeout_ms)
    db = mongo.get_default_database(default="echotune")
    app.state.mongo, app.state.db = mongo, db
    app.state.migration = state = MigrationState()
    task = None
    if settings.migrate_on_start:
        task = asyncio.create_task(migrate_until_done(db, state), name="analytics-migration")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await mongo.close()


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    """The analytics API."""
    settings = settings or AnalyticsSettings()
    configure_logging("analytics", settings.log_level, settings.log_format)
    app = FastAPI(
        title="echotune analytics",
        version="0.1.0",
        description=(
            "Provider analytics from per-minute rollups, listening patterns and engagement "
            "insights from listening history, conversations. Every answer is "
            '`{"data", "meta"}`; every error `{"error": {"code", "message", "details"}}`.'
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(api_router)
    return app

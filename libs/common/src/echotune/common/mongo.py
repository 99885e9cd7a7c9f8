"""MongoDB client factory and the names of every collection, in one place."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, OperationFailure, PyMongoError

PROVIDER_TELEMETRY = "provider_telemetry"
"""One document per provider attempt (``_id`` = the telemetry event id). Owner: telemetry."""
PROVIDER_ROLLUPS = "provider_rollups_1m"
"""Per provider, model and minute: counts, sums, histograms. Owner: telemetry."""
CONVERSATIONS = "conversations"
"""Conversation summary and latest turns per conversation id. Owner: ``conversations.py``."""
LISTENING_HISTORY = "listening_history"
"""One document per play. Owner: analytics."""


def create_mongo(
    url: str,
    *,
    timeout_ms: int = 5000,
    operation_timeout_ms: int | None = None,
    socket_timeout_ms: int | None = None,
) -> AsyncMongoClient[dict[str, Any]]:
    """An async client (PyMongo's own async API; motor is end of life) that fails fast.

    ``operation_timeout_ms`` bounds every operation (PyMongo's ``timeoutMS``); use it rather
    than cancelling PyMongo calls from outside. It also bounds server selection in place of
    ``timeout_ms``: a client whose operations may run long but must find out fast that
    MongoDB is down sets ``socket_timeout_ms`` (and ``maxTimeMS`` per query) instead.
    """
    options: dict[str, Any] = {}
    if operation_timeout_ms is not None:
        options["timeoutMS"] = operation_timeout_ms
    if socket_timeout_ms is not None:
        options["socketTimeoutMS"] = socket_timeout_ms
    return AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="echotune",
        **options,
    )


NAMESPACE_EXISTS = 48
log = logging.getLogger(__name__)


async def ensure_validator(
    db: AsyncDatabase[dict[str, Any]], name: str, schema: dict[str, Any]
) -> None:
    """Create the collection with its ``$jsonSchema`` validator, or update the validator."""
    options: dict[str, Any] = {
        "validator": {"$jsonSchema": schema},
        "validationLevel": "strict",
        "validationAction": "error",
    }
    if not await db.list_collection_names(filter={"name": name}):
        try:
            await db.create_collection(name, **options)
            log.info("created %s with its validator", name)
            return
        except CollectionInvalid:
            pass  # created by another process meanwhile
        except OperationFailure as exc:
            if exc.code != NAMESPACE_EXISTS:
                raise
    await db.command("collMod", name, **options)


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Delay before retry ``attempt`` (1-based): exponential, capped, jittered down by ≤ 50 %."""
    return min(cap_s, base_s * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


async def until_done(
    step: Callable[[], Awaitable[None]],
    what: str,
    *,
    base_s: float = 0.5,
    cap_s: float = 30.0,
    on_failure: Callable[[PyMongoError], None] | None = None,
) -> None:
    """Run ``step`` until it succeeds, waiting with back-off while MongoDB fails."""
    attempt = 0
    while True:
        try:
            await step()
            return
        except PyMongoError as exc:
            attempt += 1
            if on_failure is not None:
                on_failure(exc)
            delay = backoff_s(attempt, base_s, cap_s)
            log.warning("%s failed (attempt %d), retry in %.2f s: %s", what, attempt, delay, exc)
            await asyncio.sleep(delay)

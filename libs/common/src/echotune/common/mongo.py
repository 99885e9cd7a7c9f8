"""MongoDB client factory and the names of every collection, in one place."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

PROVIDER_TELEMETRY = "provider_telemetry"
"""One document per provider attempt (``_id`` = the telemetry event id). Owner: telemetry."""
PROVIDER_ROLLUPS = "provider_rollups_1m"
"""Per provider, model and minute: counts, sums, histograms. Owner: telemetry."""
CONVERSATIONS = "conversations"
"""Conversation summary and latest turns per conversation id."""
LISTENING_HISTORY = "listening_history"
"""One document per play. Owner: analytics."""


def create_mongo(
    url: str, *, timeout_ms: int = 5000, operation_timeout_ms: int | None = None
) -> AsyncMongoClient[dict[str, Any]]:
    """An async client (PyMongo's own async API; motor is end of life) that fails fast.

    ``operation_timeout_ms`` bounds every operation (PyMongo's ``timeoutMS``); use it rather
    than cancelling PyMongo calls from outside.
    """
    options: dict[str, Any] = {}
    if operation_timeout_ms is not None:
        options["timeoutMS"] = operation_timeout_ms
    return AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="echotune",
        **options,
    )

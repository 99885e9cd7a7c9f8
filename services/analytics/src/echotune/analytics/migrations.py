"""Idempotent startup migration: the ``listening_history`` validator and every index the
analytics queries read with.

Analytics owns ``listening_history``. On ``provider_rollups_1m`` (owned by telemetry) and
``conversations`` it runs the owner's migration (``echotune.common.conversations``); on
``provider_rollups_1m`` (owned by telemetry) it only makes sure the indexes it reads with
exist, with the owner's key and name, creating them when missing (the owner later adjusts
options such as the TTL). Safe to run from several processes at once and on every start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from echotune.common.conversations import migrate_conversations
from echotune.common.mongo import (
    LISTENING_HISTORY,
    PROVIDER_ROLLUPS,
    ensure_validator,
)

log = logging.getLogger(__name__)
Document = dict[str, Any]
INDEX_CONFLICTS = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict

_INT = ["int", "long"]
_NULLABLE_STR = {"bsonType": ["string", "null"]}
_NULLABLE_BOOL = {"bsonType": ["bool", "null"]}
_STR_ARRAY = {"bsonType": "array", "items": {"bsonType": "string"}}

LISTENING_SCHEMA: Document = {
    "bsonType": "object",
    "title": "One play of one track by one user (playedAt = when it started, UTC)",
    "required": [
        "_id",
        "userId",
        "playedAt",
        "trackId",
        "trackName",
        "artistIds",
        "artistNames",
        "genres",
        "msPlayed",
    ],
    "properties": {
        "_id": {"bsonType": "string", "minLength": 1},
        "userId": {"bsonType": "string", "minLength": 1},
        "playedAt": {"bsonType": "date"},
        "trackId": {"bsonType": "string", "minLength": 1},
        "trackName": {"bsonType": "string"},
        "artistIds": _STR_ARRAY,
        "artistNames": _STR_ARRAY,
        "album": _NULLABLE_STR,
        "genres": _STR_ARRAY,
        "msPlayed": {"bsonType": _INT, "minimum": 0},
        "trackDurationMs": {"bsonType": [*_INT, "null"], "minimum": 0},
        "skipped": _NULLABLE_BOOL,
        "reasonStart": _NULLABLE_STR,
        "reasonEnd": _NULLABLE_STR,
        "shuffle": _NULLABLE_BOOL,
        "platform": _NULLABLE_STR,
        "source": _NULLABLE_STR,
    },
}


@dataclass(frozen=True)
class IndexSpec:
    """One index, recognised by its key whatever its name."""

    collection: str
    name: str
    keys: list[tuple[str, int]]


INDEXES = [
    # listening: per user (and the session windows, which need user then time order)
    IndexSpec(LISTENING_HISTORY, "user_playedAt", [("userId", 1), ("playedAt", 1)]),
    # listening: every user over a time range
    IndexSpec(LISTENING_HISTORY, "playedAt", [("playedAt", 1)]),
    # provider analytics: the same keys and names as the telemetry service's migration
    IndexSpec(PROVIDER_ROLLUPS, "minute_ttl", [("minute", -1)]),
    IndexSpec(
        PROVIDER_ROLLUPS, "provider_model_minute", [("provider", 1), ("model", 1), ("minute", -1)]
    ),
]


async def ensure_index(collection: AsyncCollection[Document], spec: IndexSpec) -> None:
    """Create the index unless one with the same key exists."""
    for info in (await collection.index_information()).values():
        if [(f, int(d)) for f, d in info["key"]] == spec.keys:
            return
    try:
        await collection.create_index(spec.keys, name=spec.name)
    except OperationFailure as exc:
        if exc.code not in INDEX_CONFLICTS:
            raise
        log.info("%s.%s: created meanwhile by another process: %s", collection.name, spec.name, exc)
        return
    log.info("%s: created index %s", collection.name, spec.name)


async def migrate(db: AsyncDatabase[Document]) -> None:
    """Bring the listening collection and the indexes analytics reads with up to date."""
    await ensure_validator(db, LISTENING_HISTORY, LISTENING_SCHEMA)
    await migrate_conversations(db)  # its owner's migration, so its reads have their index
    for spec in INDEXES:
        await ensure_index(db[spec.collection], spec)

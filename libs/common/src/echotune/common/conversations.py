"""The ``conversations`` collection: its schema and migration (written by the worker, read by
analytics). One document per conversation: ``_id``, ``userId``, ``summary``, ``turns`` (the
latest messages, each tagged with the request and the run that wrote it: its epoch and take
time), ``recorded`` (the latest requests whose turn was recorded, their ids), ``messageCount``,
``lastActivity``, ``rev`` (compare-and-set revision).
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from echotune.common.mongo import CONVERSATIONS, ensure_validator

SCHEMA: dict[str, Any] = {
    "bsonType": "object",
    "required": ["userId", "turns", "messageCount", "lastActivity"],
    "properties": {
        "userId": {"bsonType": "string"},
        "summary": {"bsonType": "string"},
        "turns": {
            "bsonType": "array",
            "items": {
                "bsonType": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["user", "assistant"]},
                    "content": {"bsonType": "string"},
                    "requestId": {"bsonType": "string"},
                    "epoch": {"bsonType": ["int", "long"], "minimum": 1},
                    "takenAt": {"bsonType": "double"},
                },
            },
        },
        "recorded": {"bsonType": "array", "items": {"bsonType": "string"}},
        "messageCount": {"bsonType": ["int", "long"], "minimum": 0},
        "lastActivity": {"bsonType": "date"},
        "rev": {"bsonType": ["int", "long"], "minimum": 1},
    },
}
USER_RECENT = [("userId", ASCENDING), ("lastActivity", DESCENDING)]
"""A user's conversations, newest first."""


async def migrate_conversations(db: AsyncDatabase[dict[str, Any]]) -> None:
    """Validator and index; idempotent, safe from several processes at once."""
    await ensure_validator(db, CONVERSATIONS, SCHEMA)
    await db[CONVERSATIONS].create_index(USER_RECENT, name="user_recent")

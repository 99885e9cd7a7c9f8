"""The ``conversations`` collection: its schema, migration and ids (written by the worker, read
by analytics). A conversation id is its user's own: two users may use the same one. A
document's ``_id`` is the id itself for the first user of it (every document before ids were
per user), ``<userId>/<id>`` for any other (an id never holds ``/``), so no migration was
needed. One document per conversation: ``_id``, ``userId``, ``summary``, ``turns`` (the
latest messages, each tagged with the request and the run that wrote it: its epoch and take
time), ``recorded`` (the latest jobs whose turn was recorded: request id and creation time),
``messageCount``, ``lastActivity``, ``rev`` (compare-and-set revision).
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


def stored_ids(user_id: str, conversation_id: str) -> list[str]:
    """The ``_id``s a user's conversation may have: the id itself, or its per-user form (the
    documents match only with ``userId`` too)."""
    return [conversation_id, f"{user_id}/{conversation_id}"]


def public_id(stored_id: str) -> str:
    """The conversation id its user knows, from a document's ``_id``."""
    return stored_id.rpartition("/")[2]

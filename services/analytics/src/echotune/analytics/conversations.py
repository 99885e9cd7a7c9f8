"""Read side of ``conversations`` (written by the worker): a user's list, and one conversation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.params import Page
from echotune.common.conversations import public_id, stored_ids
from echotune.common.mongo import CONVERSATIONS

Document = dict[str, Any]
COLUMNS = {
    "user_id": "userId",
    "summary": "summary",
    "message_count": "messageCount",
    "last_activity": "lastActivity",
    "turns": "turns",
}
"""API field → document field."""
CONVERSATION_FIELDS = tuple(COLUMNS)
LIST_DEFAULT_FIELDS = ("user_id", "summary", "message_count", "last_activity")


def projection(fields: Sequence[str]) -> Document:
    """The document fields behind the API ``fields`` (the id always comes; only it when
    ``fields`` is empty, not the whole document)."""
    return {COLUMNS[name]: 1 for name in fields} or {"_id": 1}


def to_api(doc: Document, fields: Sequence[str]) -> Document:
    """A conversation document in API form, with only ``fields`` (and the id)."""
    out: Document = {"id": public_id(str(doc["_id"]))}
    for name in fields:
        value = doc.get(COLUMNS[name])
        if name == "turns":
            value = [
                {"role": t.get("role"), "content": t.get("content"), "at": t.get("at")}
                for t in value or []
            ]
        out[name] = value
    return out


async def list_conversations(
    db: AsyncDatabase[Document],
    user_id: str,
    fields: Sequence[str],
    page: Page,
    max_time_ms: int,
) -> tuple[list[Document], int]:
    """A user's conversations, most recent activity first, and how many there are."""
    collection = db[CONVERSATIONS]
    query = {"userId": user_id}
    cursor = (
        collection.find(query, projection(fields), max_time_ms=max_time_ms)
        .sort("lastActivity", -1)
        .skip(page.skip)
        .limit(page.limit)
    )
    docs = await cursor.to_list()
    total = await collection.count_documents(query, maxTimeMS=max_time_ms)
    return [to_api(doc, fields) for doc in docs], total


async def get_conversation(
    db: AsyncDatabase[Document],
    conversation_id: str,
    user_id: str | None,
    fields: Sequence[str],
    max_time_ms: int,
) -> Document | None:
    """One conversation, or ``None`` when it does not exist (or is another user's); without
    ``user_id``, the id's first user's."""
    query: Document = {"_id": conversation_id}
    if user_id:
        query = {"_id": {"$in": stored_ids(user_id, conversation_id)}, "userId": user_id}
    doc = await db[CONVERSATIONS].find_one(query, projection(fields), max_time_ms=max_time_ms)
    return None if doc is None else to_api(doc, fields)

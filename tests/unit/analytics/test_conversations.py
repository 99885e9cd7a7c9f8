"""GET /api/conversations and /api/conversations/{id}: the read side of ``conversations``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pymongo.asynchronous.database import AsyncDatabase

from echotune.common.mongo import CONVERSATIONS
from tests.unit.analytics.conftest import get_ok

Document = dict[str, Any]
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


def conversation(n: int, user: str) -> Document:
    at = NOW - timedelta(hours=n * 7 % 23, minutes=n)
    return {
        "_id": f"conv-{user}-{n}",
        "userId": user,
        "summary": f"- question {n}",
        "turns": [
            {"role": "user", "content": f"question {n}", "at": at - timedelta(seconds=5)},
            {"role": "assistant", "content": f"answer {n}", "at": at},
        ],
        "messageCount": 2,
        "lastActivity": at,
    }


async def test_list_newest_first_paginated(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    docs = [conversation(n, "alice") for n in range(12)] + [
        conversation(n, "bob") for n in range(3)
    ]
    await db[CONVERSATIONS].insert_many(docs)
    alice = sorted(
        (d for d in docs if d["userId"] == "alice"), key=lambda d: d["lastActivity"], reverse=True
    )
    seen = []
    for page in (1, 2, 3):
        body = await get_ok(api, "/api/conversations", user_id="alice", limit=5, page=page)
        assert (body["meta"]["total"], body["meta"]["page"], body["meta"]["limit"]) == (12, page, 5)
        seen += body["data"]
    assert [c["id"] for c in seen] == [d["_id"] for d in alice]
    first = seen[0]
    assert set(first) == {"id", "user_id", "summary", "message_count", "last_activity"}
    assert datetime.fromisoformat(first["last_activity"]) == alice[0]["lastActivity"]
    assert first["message_count"] == 2


async def test_list_fields_and_unknown_user(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    await db[CONVERSATIONS].insert_many([conversation(n, "alice") for n in range(3)])
    body = await get_ok(api, "/api/conversations", user_id="alice", fields="summary,turns")
    assert all(set(c) == {"id", "summary", "turns"} for c in body["data"])
    assert body["data"][0]["turns"][0]["role"] == "user"
    nobody = await get_ok(api, "/api/conversations", user_id="nobody")
    assert (nobody["data"], nobody["meta"]["total"]) == ([], 0)


async def test_one_conversation(db: AsyncDatabase[Document], api: httpx.AsyncClient) -> None:
    await db[CONVERSATIONS].insert_many([conversation(n, "alice") for n in range(2)])
    body = await get_ok(api, "/api/conversations/conv-alice-1")
    data = body["data"]
    assert (data["id"], data["user_id"]) == ("conv-alice-1", "alice")
    assert [t["content"] for t in data["turns"]] == ["question 1", "answer 1"]
    assert (
        datetime.fromisoformat(data["turns"][1]["at"]) == conversation(1, "alice")["turns"][1]["at"]
    )
    only = await get_ok(api, "/api/conversations/conv-alice-1", fields="summary")
    assert only["data"] == {"id": "conv-alice-1", "summary": "- question 1"}
    owner = await get_ok(api, "/api/conversations/conv-alice-1", user_id="alice")
    assert owner["data"]["id"] == "conv-alice-1"


async def test_missing_or_foreign_conversation_is_404(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    await db[CONVERSATIONS].insert_one(conversation(1, "alice"))
    for path, params in [
        ("/api/conversations/nope", {}),
        ("/api/conversations/conv-alice-1", {"user_id": "mallory"}),
    ]:
        response = await api.get(path, params=params)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "conversation_not_found"


async def test_a_conversation_id_is_each_users_own(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    """A second user of an id has their own conversation under it (stored as ``user/id``)."""
    alices = conversation(1, "alice")
    bobs = {**conversation(1, "bob"), "_id": f"bob/{alices['_id']}"}
    await db[CONVERSATIONS].insert_many([alices, bobs])
    for user in ("alice", "bob"):
        one = await get_ok(api, f"/api/conversations/{alices['_id']}", user_id=user)
        assert (one["data"]["id"], one["data"]["user_id"]) == (alices["_id"], user)
        listed = await get_ok(api, "/api/conversations", user_id=user)
        assert [c["id"] for c in listed["data"]] == [alices["_id"]]


async def test_fields_id_alone_returns_only_ids(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    """``fields=id`` was ``unknown field(s) id``; then (review) it said ``meta.fields: []``."""
    await db[CONVERSATIONS].insert_many([conversation(n, "alice") for n in range(2)])
    body = await get_ok(api, "/api/conversations", user_id="alice", fields="id")
    assert sorted(row["id"] for row in body["data"]) == ["conv-alice-0", "conv-alice-1"]
    assert all(set(row) == {"id"} for row in body["data"]), body["data"]
    assert body["meta"]["fields"] == ["id"]
    one = await get_ok(api, "/api/conversations/conv-alice-0", user_id="alice", fields="id")
    assert (one["data"], one["meta"]["fields"]) == ({"id": "conv-alice-0"}, ["id"])

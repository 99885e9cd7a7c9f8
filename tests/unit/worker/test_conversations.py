"""Conversation turns: recorded atomically, once per request."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from echotune.common.messages import ChatJob, ChatMessage, Role
from echotune.common.mongo import create_mongo
from echotune.worker.conversations import ConversationStore
from tests.unit.analytics.conftest import with_database


@pytest.fixture
async def store(mongo_server_url: str) -> AsyncIterator[ConversationStore]:
    client = create_mongo(with_database(mongo_server_url, f"conv{uuid.uuid4().hex[:8]}"))
    conversations = ConversationStore(client, max_chars=6000, keep_turns=40)
    await conversations.migrate()
    yield conversations
    await client.drop_database(conversations.collection.database.name)
    await client.close()


def job(conversation_id: str, question: str, request_id: str | None = None) -> ChatJob:
    return ChatJob(
        request_id=request_id or f"r-{uuid.uuid4().hex}",
        conversation_id=conversation_id,
        user_id="u1",
        messages=[ChatMessage(role=Role.USER, content=question)],
        provider="demo",
        model="m",
        deadline_at=time.time() + 60,
    )


async def test_concurrent_turns_are_all_kept(store: ConversationStore) -> None:
    """Read-then-write: two answers finishing together lost one summary line."""
    questions = [f"question {n}" for n in range(8)]
    await asyncio.gather(*(store.append(job("c1", q), f"answer to {q}") for q in questions))
    document = await store.collection.find_one({"_id": "c1"})
    assert document is not None
    assert document["messageCount"] == 16
    assert sorted(t["content"] for t in document["turns"] if t["role"] == "user") == questions
    assert all(q in document["summary"] for q in questions), document["summary"]


async def test_a_restarted_job_records_its_turn_once(store: ConversationStore) -> None:
    """A reclaimed job appended its turn again."""
    first = job("c2", "only once", request_id="r-same-request")
    await store.append(first, "partial answer", epoch=1)
    await store.append(first, "partial answer", epoch=1)  # a retried write
    await store.append(first, "the whole answer", epoch=2)  # the run after a lost worker
    await store.append(first, "late stale answer", epoch=1)
    document = await store.collection.find_one({"_id": "c2"})
    assert document is not None
    assert document["messageCount"] == 2
    assert [t["content"] for t in document["turns"]] == ["only once", "the whole answer"]

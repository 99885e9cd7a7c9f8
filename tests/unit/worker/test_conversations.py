"""Conversation turns: recorded atomically, once per request."""

from __future__ import annotations

import asyncio
import time
import uuid

from echotune.common.messages import ChatJob, ChatMessage, Role
from echotune.worker.conversations import ConversationStore


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


async def test_a_later_take_of_the_same_epoch_replaces_the_turn(store: ConversationStore) -> None:
    """Redis lost a take after its run checked its fence: that run recorded its turn, and the
    next run, of the same epoch, found it recorded and kept it, an answer its client never
    got. A turn written by an earlier take of the epoch stays ignored."""
    request = job("c3", "which take wins", request_id="r-same-epoch")
    await store.append(request, "the stale producer's answer", epoch=1, taken_at=100.0)
    await store.append(request, "the current producer's answer", epoch=1, taken_at=105.0)
    await store.append(request, "the stale producer's answer", epoch=1, taken_at=100.0)
    document = await store.collection.find_one({"_id": "c3"})
    assert document is not None
    assert document["messageCount"] == 2
    contents = [t["content"] for t in document["turns"]]
    assert contents == ["which take wins", "the current producer's answer"]


async def test_a_replaced_turn_keeps_its_place(store: ConversationStore) -> None:
    """A turn replaced by a later run of its request moved to the end of the conversation,
    after the turns of questions asked after it."""
    early = job("c4", "asked first", request_id="r-replaced")
    await store.append(early, "the lost worker's answer", epoch=1)
    await store.append(job("c4", "asked second"), "the second answer")
    await store.append(early, "the whole answer", epoch=2)
    document = await store.collection.find_one({"_id": "c4"})
    assert document is not None
    assert document["messageCount"] == 4
    contents = [t["content"] for t in document["turns"]]
    assert contents == ["asked first", "the whole answer", "asked second", "the second answer"]


async def test_a_run_again_is_not_given_its_own_earlier_answer(store: ConversationStore) -> None:
    """A job run again (its worker lost after it recorded the turn) read that turn back as
    context: the model saw its own earlier answer to the very question it was asked."""
    await store.append(job("c5", "asked before"), "the earlier answer")
    again = job("c5", "asked now", request_id="r-run-again")
    await store.append(again, "the lost run's answer", epoch=1)
    context = await store.context(again)
    summary, *turns = context.messages
    assert summary.role is Role.SYSTEM
    assert summary.content == "Earlier in this conversation:\n- asked before"
    assert [m.content for m in turns] == ["asked before", "the earlier answer"]
    assert context.usage.turns == 2


async def test_a_run_again_sees_the_conversation_as_it_was_asked(
    store: ConversationStore,
) -> None:
    """Nor the turns recorded after its lost run's (questions asked since), which that run
    never saw."""
    await store.append(job("c6", "asked before"), "the earlier answer")
    again = job("c6", "asked now", request_id="r-as-asked")
    await store.append(again, "the lost run's answer", epoch=1)
    await store.append(job("c6", "asked after"), "the later answer")
    context = await store.context(again)
    summary, *turns = context.messages
    assert summary.content == "Earlier in this conversation:\n- asked before"
    assert [m.content for m in turns] == ["asked before", "the earlier answer"]


async def test_a_run_again_whose_turn_aged_out_is_not_recorded_twice(
    store: ConversationStore,
) -> None:
    """A run again whose lost run's turn had left the window (``keep_turns`` newer messages
    recorded meanwhile) recorded the question a second time: +2 messages, a second summary
    line."""
    store.keep_turns = 2
    again = job("c7", "asked once", request_id="r-aged-out")
    await store.append(again, "the lost run's answer", epoch=1)
    await store.append(job("c7", "asked next"), "the next answer")
    await store.append(again, "the whole answer", epoch=2)
    document = await store.collection.find_one({"_id": "c7"})
    assert document is not None
    assert document["messageCount"] == 4
    assert [t["content"] for t in document["turns"]] == ["asked next", "the next answer"]
    assert document["summary"] == "- asked next\n- asked once"


def users_job(user: str, conversation_id: str, question: str) -> ChatJob:
    return job(conversation_id, question).model_copy(update={"user_id": user})


async def test_two_users_may_use_the_same_conversation_id(store: ConversationStore) -> None:
    """An answer in a conversation id another user had used was answered without context and
    its turn silently not recorded: the user's later questions there had no context."""
    await store.append(users_job("alice", "default", "alice asks"), "to alice")
    await store.append(users_job("bob", "default", "bob asks"), "to bob")
    await store.append(users_job("bob", "default", "bob again"), "to bob again")
    bobs = await store.context(users_job("bob", "default", "and now"))
    assert [m.content for m in bobs.messages[1:]] == [
        "bob asks",
        "to bob",
        "bob again",
        "to bob again",
    ]
    alices = await store.context(users_job("alice", "default", "and now"))
    assert [m.content for m in alices.messages[1:]] == ["alice asks", "to alice"]
    documents = await store.collection.find({}).sort("_id").to_list(None)
    assert [(d["_id"], d["userId"], d["messageCount"]) for d in documents] == [
        ("bob/default", "bob", 4),
        ("default", "alice", 2),
    ]


async def test_a_request_id_used_again_for_a_new_answer_is_recorded(
    store: ConversationStore,
) -> None:
    """A request id is free again once its answer lapsed: the new answer's turn was taken for
    a run again of the old one (its id remembered as recorded) and not recorded."""
    store.keep_turns = 2
    await store.append(job("c9", "asked first", request_id="r-reused"), "first answer")
    await store.append(job("c9", "asked next"), "next answer")
    await store.append(job("c9", "asked anew", request_id="r-reused"), "new answer")
    document = await store.collection.find_one({"_id": "c9"})
    assert document is not None
    assert document["messageCount"] == 6
    assert [t["content"] for t in document["turns"]] == ["asked anew", "new answer"]

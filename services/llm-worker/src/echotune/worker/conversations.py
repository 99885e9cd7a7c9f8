"""Conversation context: what the worker reads before an answer and writes after it.

Collection ``conversations`` (``common.conversations``: each user's ids are their own), one
document per conversation: ``_id``, ``userId``, ``summary``, ``turns`` (the latest
``keep_turns`` messages), ``recorded`` (the latest jobs whose turn was recorded),
``messageCount``, ``lastActivity``. The summary is extractive (the latest user questions,
shortened), so refreshing it costs no provider call.
Context never blocks an answer: when MongoDB is slow or down the answer goes on without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from echotune.common.conversations import migrate_conversations, stored_ids
from echotune.common.messages import ChatJob, ChatMessage, ContextUsage, Role
from echotune.common.mongo import CONVERSATIONS, until_done
from echotune.worker.mongo_pause import MongoPause

log = logging.getLogger(__name__)

SUMMARY_CHARS = 600
QUESTION_CHARS = 120
CAS_ATTEMPTS = 8
RECORDED_KEEP = 100
"""Jobs remembered as recorded, so a run again whose turn left the window adds none; a run
again comes within minutes, far fewer answers than this."""


@dataclass(frozen=True, slots=True)
class ConversationContext:
    """Messages to put before the user's message, and how much they weigh."""

    messages: list[ChatMessage] = field(default_factory=list)
    usage: ContextUsage = field(default_factory=ContextUsage)


def summary_line(question: str) -> str:
    """The question as the summary lists it: one line, shortened."""
    return "- " + " ".join(question.split())[:QUESTION_CHARS]


def summarize(previous: str, question: str) -> str:
    """Latest questions first, each shortened, bounded to ``SUMMARY_CHARS``."""
    lines = [summary_line(question), *[line for line in previous.splitlines() if line.strip()]]
    kept: list[str] = []
    for line in lines:
        if sum(len(k) + 1 for k in kept) + len(line) > SUMMARY_CHARS:
            break
        kept.append(line)
    return "\n".join(kept)


def build_context(
    document: dict[str, Any] | None, max_chars: int, request_id: str = ""
) -> ConversationContext:
    """The summary and the newest turns that fit in ``max_chars`` characters, oldest first;
    for a run again of ``request_id``, as the conversation was when it was asked."""
    if not document:
        return ConversationContext()
    messages: list[ChatMessage] = []
    used = 0
    summary, recorded = as_asked(document, request_id)
    if summary and len(summary) <= max_chars:
        messages.append(
            ChatMessage(role=Role.SYSTEM, content=f"Earlier in this conversation:\n{summary}")
        )
        used += len(summary)
    turns: list[ChatMessage] = []
    for turn in reversed(recorded):
        if used + len(turn["content"]) > max_chars:
            break
        turns.insert(0, ChatMessage(role=Role(turn["role"]), content=turn["content"]))
        used += len(turn["content"])
    return ConversationContext(messages + turns, ContextUsage(turns=len(turns), chars=used))


def as_asked(document: dict[str, Any], request_id: str) -> tuple[str, list[dict[str, Any]]]:
    """The summary and turns before ``request_id``'s own: a run again of a request whose
    lost run recorded its turn sees neither that turn nor the questions recorded since (nor
    their summary lines, the newest first), as that run did."""
    summary, turns = document.get("summary") or "", document.get("turns") or []
    if not request_id or (at := _first_turn(turns, request_id)) is None:
        return summary, turns
    lines = summary.splitlines()
    for turn in turns[at:]:
        if turn.get("role") == "user" and (line := summary_line(turn["content"])) in lines:
            lines.remove(line)
    return "\n".join(lines), turns[:at]


class ConversationStore:
    def __init__(
        self, client: AsyncMongoClient[dict[str, Any]], *, max_chars: int, keep_turns: int
    ) -> None:
        self.collection = client.get_default_database("echotune")[CONVERSATIONS]
        self.max_chars, self.keep_turns = max_chars, keep_turns
        self.pause = MongoPause()

    async def migrate(self) -> None:
        await migrate_conversations(self.collection.database)

    async def context(self, job: ChatJob) -> ConversationContext:
        if not (job.options.use_context and job.conversation_id) or job.new_conversation:
            return ConversationContext()
        if self.pause.active:
            return ConversationContext()
        try:
            ids = stored_ids(job.user_id, job.conversation_id)
            document = await self.collection.find_one(
                {"_id": {"$in": ids}, "userId": job.user_id},
                {"summary": 1, "turns": {"$slice": -self.keep_turns}},
            )
        except Exception as exc:  # context is optional: never let it break an answer
            self.pause.failed(exc, "conversation context unavailable, answering without it")
            return ConversationContext()
        return build_context(document, self.max_chars, job.request_id)

    def records(self, job: ChatJob) -> bool:
        """Whether :meth:`append` would record the job's turn now."""
        return bool(job.options.use_context and job.conversation_id) and not self.pause.active

    async def append(self, job: ChatJob, answer: str, epoch: int = 1, taken_at: float = 0) -> None:
        """Record the finished turn and refresh the summary, once per request.

        A compare-and-set on ``rev``: concurrent answers of one conversation never overwrite
        each other. A job run again after its worker was lost (a higher ``epoch``) replaces
        its earlier answer in place instead of adding a second turn; so does a later take of
        the same epoch (``taken_at``, a worker's clock): Redis lost the take before it.
        """
        if not self.records(job):
            return
        try:
            for _ in range(CAS_ATTEMPTS):
                if await self._try_append(job, answer, (epoch, taken_at)):
                    return
            log.warning("conversation turn not recorded: too many concurrent updates")
        except Exception as exc:  # recording is best effort: never let it break an answer
            self.pause.failed(exc, "conversation turn not recorded")

    async def _try_append(self, job: ChatJob, answer: str, run: tuple[int, float]) -> bool:
        """One compare-and-set; ``False`` when someone else changed the document meanwhile."""
        assert job.conversation_id is not None  # records() said so
        ids = stored_ids(job.user_id, job.conversation_id)
        found = await self.collection.find(
            {"_id": {"$in": ids}}, {"summary": 1, "userId": 1, "turns": 1, "recorded": 1, "rev": 1}
        ).to_list(2)
        document = next((d for d in found if d.get("userId") == job.user_id), None)
        new_id = ids[1] if any(d["_id"] == ids[0] for d in found) else ids[0]  # id's first user
        turns: list[dict[str, Any]] = (document or {}).get("turns") or []
        recorded: list[str] = (document or {}).get("recorded") or []
        mine = [t for t in turns if t.get("requestId") == job.request_id]
        if mine and max(_run_of(t) for t in mine) >= run:
            return True  # recorded already by this or a later run
        if not mine and _recorded_as(job) in recorded:
            return True  # its turn left the window: nothing to replace, no question to add
        question, now = job.messages[-1].content, datetime.now(UTC)
        tag = {"requestId": job.request_id, "epoch": run[0], "takenAt": float(run[1])}
        pair = [
            {"role": "user", "content": question, "at": job.created_at, **tag},
            {"role": "assistant", "content": answer, "at": now, **tag},
        ]
        new_turns = _with_turns(turns, job.request_id, pair)[-self.keep_turns :]
        summary = (document or {}).get("summary", "")
        fields = {"turns": new_turns, "lastActivity": now}
        if _recorded_as(job) not in recorded:
            fields["recorded"] = [*recorded, _recorded_as(job)][-RECORDED_KEEP:]
        fields["summary"] = summary if mine else summarize(summary, question)
        if document is None:
            try:
                await self.collection.insert_one(
                    {
                        "_id": new_id,
                        "userId": job.user_id,
                        "messageCount": 2,
                        "rev": 1,
                        **fields,
                    }
                )
            except DuplicateKeyError:
                return False
            return True
        rev = document.get("rev")
        result = await self.collection.update_one(
            {"_id": document["_id"], "rev": rev},
            {"$set": {**fields, "rev": (rev or 0) + 1}, "$inc": {"messageCount": 0 if mine else 2}},
        )
        return result.matched_count == 1


def _with_turns(
    turns: list[dict[str, Any]], request_id: str, pair: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``turns`` with ``pair`` in place of the request's earlier turns (where they were, not
    after the questions asked since), or after them all. The replaced answer's ``at`` is its
    own time, so ``at`` need not grow along the list."""
    at = _first_turn(turns, request_id)
    at = len(turns) if at is None else at
    kept = [t for t in turns if t.get("requestId") != request_id]
    return [*kept[:at], *pair, *kept[at:]]


def _first_turn(turns: list[dict[str, Any]], request_id: str) -> int | None:
    """Where the request's turns begin (``None``: it has none)."""
    return next((i for i, t in enumerate(turns) if t.get("requestId") == request_id), None)


def _recorded_as(job: ChatJob) -> str:
    """The job as ``recorded`` remembers it: its runs share it, a new answer under a request
    id used again (once the old one lapsed) does not."""
    return f"{job.request_id}@{job.created_at.isoformat()}"


def _run_of(turn: dict[str, Any]) -> tuple[int, float]:
    """The run that wrote a turn: its epoch and take time (0 when written before either)."""
    return int(turn.get("epoch") or 0), float(turn.get("takenAt") or 0)


async def migrate_when_possible(store: ConversationStore) -> None:
    """Run the migration at start-up, waiting (with back-off) while MongoDB is unreachable."""
    await until_done(store.migrate, "conversations migration")

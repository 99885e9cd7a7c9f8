"""A few synthetic conversations per user, so the conversations endpoints show something."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.seed.listening import user_id
from echotune.common.mongo import CONVERSATIONS

Document = dict[str, Any]
QUESTIONS = (
    "Music for a rainy evening?",
    "Something upbeat for running",
    "Albums like my top artist this month",
    "Quiet instrumental music to focus",
    "What did I listen to most on weekends?",
    "A playlist for a road trip",
)


def conversations(seed: int, users: int, per_user: int, end: datetime) -> list[Document]:
    """``per_user`` conversations of every user, the latest a few hours before ``end``."""
    rnd = random.Random(f"conversations:{seed}")
    docs = []
    for index in range(1, users + 1):
        for n in range(per_user):
            last = end - timedelta(hours=rnd.uniform(1, 24 * 30))
            turns: list[Document] = []
            for k in range(rnd.randint(1, 4)):
                at = last - timedelta(minutes=5 * k)
                question = rnd.choice(QUESTIONS)
                turns[:0] = [
                    {"role": "user", "content": question, "at": at - timedelta(seconds=20)},
                    {"role": "assistant", "content": f"Here are some ideas: {question}", "at": at},
                ]
            summary = "\n".join(f"- {t['content']}" for t in reversed(turns) if t["role"] == "user")
            docs.append(
                {
                    "_id": f"seed{seed}-{user_id(index)}-{n:02d}",
                    "userId": user_id(index),
                    "summary": summary,
                    "turns": turns,
                    "messageCount": len(turns),
                    "lastActivity": last,
                }
            )
    return docs


async def write_conversations(db: AsyncDatabase[Document], docs: list[Document]) -> int:
    """Insert the conversations that do not exist yet; how many were new."""
    if not docs:
        return 0
    ops = [UpdateOne({"_id": d["_id"]}, {"$setOnInsert": d}, upsert=True) for d in docs]
    result = await db[CONVERSATIONS].bulk_write(ops, ordered=False)
    return result.upserted_count

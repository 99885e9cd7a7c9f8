"""Per provider, model and minute rollups in ``provider_rollups_1m``, each event counted once.

One document per ``(provider, model, minute)``, ``_id`` = ``"<provider>|<model>|<minute ISO>"``:

* ``provider``, ``model``, ``minute`` (UTC, truncated to the minute)
* ``count``, ``successes``, ``errors.<code>`` (failed attempts by ``errorCode``; ``unknown``
  when it has none; dots in codes become ``_``, a leading ``$`` is dropped)
* ``latencyMsSum``, ``ttftMsSum``, ``ttftCount`` (attempts that produced a first token),
  ``tokensIn``, ``tokensOut``
* ``latencyHist.<i>`` / ``ttftHist.<i>``: sparse histograms in the fixed log-scale layout of
  :mod:`echotune.common.histogram` — bucket ``i`` covers ``[2^(i/8), 2^((i+1)/8))`` ms, eight
  buckets per doubling from 1 ms to ~4.7 h (values below 1 ms fall in bucket 0, above the
  range in the last). Histograms of any set of rollups add up (``histogram.merge``) and a
  quantile read from the sum is off by at most ``MAX_RELATIVE_ERROR`` = 2^(1/16) − 1 ≈ 4.4 %
  for values of 1 ms and more.
* ``batches`` / ``lastBatchAt``: the write batches counted here (see below), dropped once
  older than the dedup window.

Exactly once: every attempt document carries ``batch``, the ObjectId of the write (one per
delivery of a stream batch, the same on every retry) that inserted it. All the documents of a
batch are counted with one upsert per rollup document whose filter is ``batches: {$ne: id}``
and which pushes the id: counting a batch twice — after a crash, or by two processes at once
— changes nothing the second time. A duplicate key error on such an upsert means either
"already counted" or "lost an upsert race to another batch"; reading the document tells which.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from echotune.common.rollup_layout import increments

Document = dict[str, Any]
ROLLUP_SOURCE_FIELDS = {
    field: 1
    for field in (
        "provider",
        "model",
        "ts",
        "success",
        "errorCode",
        "latencyMs",
        "ttftMs",
        "tokensIn",
        "tokensOut",
        "batch",
    )
}
"""Fields of an attempt document that rollups read."""
UPSERT_ATTEMPTS = 5
DUPLICATE_KEY = 11000


class RollupClashError(Exception):
    """Upserts of a batch kept losing races to other batches; the write is retried later."""


def _upsert(key: str, ident: Document, inc: dict[str, float], batch: ObjectId) -> UpdateOne:
    return UpdateOne(
        {"_id": key, "batches": {"$ne": batch}},
        {
            "$inc": inc,
            "$push": {"batches": batch},
            "$max": {"lastBatchAt": batch.generation_time},
            "$setOnInsert": ident,
        },
        upsert=True,
    )


async def count_batch(
    rollups: AsyncCollection[Document], docs: list[Document], batch: ObjectId
) -> int:
    """Add the attempt documents of ``batch`` to their rollups unless already counted there;
    how many documents were counted now."""
    todo = increments(docs)
    counted = 0
    for _ in range(UPSERT_ATTEMPTS):
        keys = list(todo)
        try:
            await rollups.bulk_write(
                [_upsert(key, *todo[key], batch) for key in keys], ordered=False
            )
            return counted + sum(int(todo[key][1]["count"]) for key in keys)
        except BulkWriteError as exc:
            errors = exc.details["writeErrors"]
            if exc.details.get("writeConcernErrors") or any(
                e["code"] != DUPLICATE_KEY for e in errors
            ):
                raise
            clashed = {keys[e["index"]] for e in errors}
        counted += sum(int(todo[key][1]["count"]) for key in keys if key not in clashed)
        done = rollups.find({"_id": {"$in": list(clashed)}, "batches": batch}, {"_id": 1})
        applied = {doc["_id"] async for doc in done}
        todo = {key: todo[key] for key in clashed if key not in applied}
        if not todo:
            return counted
    raise RollupClashError(f"rollups of batch {batch} still clash after {UPSERT_ATTEMPTS} tries")


async def forget_old_batches(rollups: AsyncCollection[Document], before: datetime) -> int:
    """Drop ``batches`` from rollups no batch touched since ``before``; how many changed."""
    result = await rollups.update_many(
        {"lastBatchAt": {"$lt": before}}, {"$unset": {"batches": "", "lastBatchAt": ""}}
    )
    return result.modified_count

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

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from echotune.common.histogram import bucket_of

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


def minute_of(ts: datetime) -> datetime:
    """The UTC minute holding ``ts`` (a naive time is taken as UTC, as BSON stores it)."""
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return aware.replace(second=0, microsecond=0)


def rollup_id(provider: str, model: str, minute: datetime) -> str:
    """Deterministic ``_id`` of one rollup document."""
    return f"{provider}|{model}|{minute.isoformat()}"


def field_key(name: str) -> str:
    """A value usable as a MongoDB field name (no dots, no leading ``$``)."""
    return name.replace(".", "_").lstrip("$") or "unknown"


def _add(inc: dict[str, float], name: str, value: float) -> None:
    inc[name] = inc.get(name, 0) + value


def increments(docs: Iterable[Mapping[str, Any]]) -> dict[str, tuple[Document, dict[str, float]]]:
    """Per rollup ``_id``: its identifying fields and the ``$inc`` of these attempt documents."""
    rollups: dict[str, tuple[Document, dict[str, float]]] = {}
    for doc in docs:
        minute = minute_of(doc["ts"])
        key = rollup_id(doc["provider"], doc["model"], minute)
        if key not in rollups:
            rollups[key] = (
                {"provider": doc["provider"], "model": doc["model"], "minute": minute},
                {},
            )
        inc = rollups[key][1]
        _add(inc, "count", 1)
        if doc["success"]:
            _add(inc, "successes", 1)
        else:
            _add(inc, f"errors.{field_key(doc.get('errorCode') or 'unknown')}", 1)
        _add(inc, "latencyMsSum", float(doc["latencyMs"]))
        _add(inc, f"latencyHist.{bucket_of(float(doc['latencyMs']))}", 1)
        if (ttft := doc.get("ttftMs")) is not None:
            _add(inc, "ttftMsSum", float(ttft))
            _add(inc, "ttftCount", 1)
            _add(inc, f"ttftHist.{bucket_of(float(ttft))}", 1)
        _add(inc, "tokensIn", int(doc.get("tokensIn") or 0))
        _add(inc, "tokensOut", int(doc.get("tokensOut") or 0))
    return rollups


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

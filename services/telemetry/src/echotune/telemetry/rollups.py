"""Per provider, model and minute rollups in ``provider_rollups_1m``, each event counted once.

One document per ``(provider, model, minute)``, ``_id`` = ``"<provider>|<model>|<minute ISO>"``:

* ``provider``, ``model``, ``minute`` (UTC, truncated to the minute)
* ``count``, ``successes``, ``errors.<code>`` (failed attempts by ``errorCode``, ``unknown``
  when it has none)
* ``latencyMsSum``, ``ttftMsSum``, ``ttftCount`` (attempts that produced a first token),
  ``tokensIn``, ``tokensOut``
* ``latencyHist.<i>`` / ``ttftHist.<i>``: sparse histograms in the fixed log-scale layout of
  :mod:`echotune.common.histogram` — bucket ``i`` covers ``[2^(i/8), 2^((i+1)/8))`` ms, eight
  buckets per doubling from 1 ms to ~4.7 h. Histograms of any set of rollups add up
  (``histogram.merge``) and a quantile read from the sum is off by at most
  ``MAX_RELATIVE_ERROR`` = 2^(1/16) − 1 ≈ 4.4 % for values of 1 ms and more.
* ``appliedTokens``: the write tokens already counted here (see below).

Exactly once: the writer stores every new attempt document with a ``rollupToken`` (one
ObjectId per delivery of a batch). All the documents carrying a token are rolled up together,
with one upsert per rollup document whose filter is ``appliedTokens: {$ne: token}`` and which
pushes the token — so applying a token twice, after a crash or by two processes at once,
changes nothing the second time. Only then is ``rollupToken`` removed from the attempt
documents. A duplicate key error on such an upsert means either "already applied" or "lost
an upsert race to another token": it is told apart by reading the document, and retried.
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
    "provider": 1,
    "model": 1,
    "ts": 1,
    "success": 1,
    "errorCode": 1,
    "latencyMs": 1,
    "ttftMs": 1,
    "tokensIn": 1,
    "tokensOut": 1,
    "rollupToken": 1,
}
"""Fields of an attempt document that rollups read."""
UPSERT_ATTEMPTS = 5


class RollupClashError(Exception):
    """Upserts of a token kept losing races to other tokens; the write is retried later."""


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
            rollups[key] = ({"provider": doc["provider"], "model": doc["model"], "minute": minute}, {})
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


def _upsert(key: str, ident: Document, inc: dict[str, float], token: ObjectId) -> UpdateOne:
    return UpdateOne(
        {"_id": key, "appliedTokens": {"$ne": token}},
        {"$inc": inc, "$push": {"appliedTokens": token}, "$setOnInsert": ident},
        upsert=True,
    )


async def apply_token(
    rollups: AsyncCollection[Document], docs: list[Document], token: ObjectId
) -> None:
    """Add the attempt documents written under ``token`` to their rollups, once per token."""
    todo = increments(docs)
    for _ in range(UPSERT_ATTEMPTS):
        if not todo:
            return
        keys = list(todo)
        ops = [_upsert(key, *todo[key], token) for key in keys]
        try:
            await rollups.bulk_write(ops, ordered=False)
            return
        except BulkWriteError as exc:
            details = exc.details
            other = [e for e in details["writeErrors"] if e["code"] != 11000]
            if other or details.get("writeConcernErrors"):
                raise
            clashed = [keys[e["index"]] for e in details["writeErrors"]]
        done = rollups.find({"_id": {"$in": clashed}, "appliedTokens": token}, {"_id": 1})
        applied = {d["_id"] async for d in done}
        todo = {key: todo[key] for key in clashed if key not in applied}
    raise RollupClashError(f"rollups of token {token} still clash after {UPSERT_ATTEMPTS} attempts")

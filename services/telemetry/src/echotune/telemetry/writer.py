"""Writing one batch of telemetry events into MongoDB: attempt documents, then their rollups.

``write`` is idempotent: run it again with the same events (a retry, a redelivery, a
duplicate publication) and nothing is stored or counted twice. See :mod:`.rollups` for how
the ``rollupToken`` of each new document makes the per-minute counts exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from echotune.common.messages import TelemetryEvent
from echotune.common.mongo import PROVIDER_ROLLUPS, PROVIDER_TELEMETRY
from echotune.telemetry.rollups import ROLLUP_SOURCE_FIELDS, apply_token

Document = dict[str, Any]
DUPLICATE_KEY = 11000
DOCUMENT_VALIDATION_FAILURE = 121


@dataclass(slots=True)
class WriteResult:
    """What one ``write`` did."""

    written: int = 0
    """New attempt documents (inserted by this delivery and rolled up)."""
    duplicates: int = 0
    """Events already stored before this delivery: skipped."""
    recovered: int = 0
    """Documents of an interrupted delivery whose rollups were completed now."""
    rejected: dict[str, str] = field(default_factory=dict)
    """Event id → reason, for documents the collection's validator refused."""


def to_document(event: TelemetryEvent, token: ObjectId) -> Document:
    """The attempt document: camelCase fields of the event, ``_id`` = event id."""
    doc = event.model_dump(mode="json", by_alias=True, exclude={"event_id"})
    doc["ts"] = event.ts  # a BSON date, not the JSON string
    return {"_id": event.event_id, **doc, "rollupToken": token}


class TelemetryWriter:
    """Inserts attempt documents and rolls them up, once each."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.raw = db[PROVIDER_TELEMETRY]
        self.rollups = db[PROVIDER_ROLLUPS]

    async def write(
        self, events: list[TelemetryEvent], token: ObjectId, *, recover_others: bool = False
    ) -> WriteResult:
        """Store ``events`` under ``token`` (one per delivery, the same on every retry).

        With ``recover_others`` (a batch reclaimed from a crashed consumer) the rollups of
        other tokens found pending on these events are completed too; a fresh delivery leaves
        them to the delivery that owns them, which may still be running.
        """
        result = WriteResult()
        if not events:
            return result
        docs = [to_document(event, token) for event in events]
        result.rejected = await self._insert(docs)
        ids = [doc["_id"] for doc in docs if doc["_id"] not in result.rejected]
        pending = await self.raw.find(
            {"_id": {"$in": ids}, "rollupToken": {"$exists": True}}, ROLLUP_SOURCE_FIELDS
        ).to_list()
        mine = [doc for doc in pending if doc["rollupToken"] == token]
        await self._roll_up(mine, token)
        result.written, result.duplicates = len(mine), len(ids) - len(mine)
        if recover_others:
            for other in {doc["rollupToken"] for doc in pending} - {token}:
                theirs = await self.raw.find({"rollupToken": other}, ROLLUP_SOURCE_FIELDS).to_list()
                await self._roll_up(theirs, other)
                result.recovered += len(theirs)
        return result

    async def _insert(self, docs: list[Document]) -> dict[str, str]:
        """Insert, ignoring duplicate ids; the ids the validator refused, with the reason."""
        try:
            await self.raw.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            rejected: dict[str, str] = {}
            for error in exc.details["writeErrors"]:
                doc_id = docs[error["index"]]["_id"]
                if error["code"] == DUPLICATE_KEY and error.get("keyPattern", {"_id": 1}) == {
                    "_id": 1
                }:
                    continue
                if error["code"] != DOCUMENT_VALIDATION_FAILURE:
                    raise
                info = json.dumps(error.get("errInfo", {}), default=str)[:2000]
                rejected[doc_id] = f"rejected by the MongoDB validator: {info}"
            if exc.details.get("writeConcernErrors"):
                raise
            return rejected
        return {}

    async def _roll_up(self, docs: list[Document], token: ObjectId) -> None:
        """Count ``docs`` in their rollups under ``token``, then clear their pending marker."""
        if not docs:
            return
        await apply_token(self.rollups, docs, token)
        await self.raw.update_many(
            {"_id": {"$in": [doc["_id"] for doc in docs]}, "rollupToken": token},
            {"$unset": {"rollupToken": ""}},
        )

"""Writing one batch of telemetry events into MongoDB: attempt documents, then their rollups.

``write`` is idempotent: run it again with the same events (a retry, a redelivery, a
duplicate publication) and nothing is stored or counted twice. See :mod:`.rollups` for how
the ``batch`` id of each new document makes the per-minute counts exact.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import bson.errors
from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from echotune.common.messages import TelemetryEvent
from echotune.common.mongo import PROVIDER_ROLLUPS, PROVIDER_TELEMETRY
from echotune.telemetry.rollups import ROLLUP_SOURCE_FIELDS, count_batch

log = logging.getLogger(__name__)
Document = dict[str, Any]
DUPLICATE_KEY = 11000
ID_KEY = {"_id": 1}
DOCUMENT_VALIDATION_FAILURE = 121
RECENT_BATCHES = 4096
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
RECOVERY_MARGIN = timedelta(minutes=10)


@dataclass(slots=True)
class WriteResult:
    """What one ``write`` did."""

    written: int = 0
    """New attempt documents (inserted by this delivery and rolled up)."""
    duplicates: int = 0
    """Events already stored before this delivery: skipped."""
    recovered: int = 0
    """Documents of an interrupted delivery counted in the rollups now."""
    rejected: dict[str, str] = field(default_factory=dict)
    """Event id → reason, for documents the collection's validator refused."""


def to_document(event: TelemetryEvent, batch: ObjectId) -> Document:
    """The attempt document: camelCase fields of the event, ``_id`` = event id."""
    doc = event.model_dump(mode="json", by_alias=True, exclude={"event_id"})
    doc["ts"] = event.ts  # a BSON date, not the JSON string
    return {"_id": event.event_id, **doc, "batch": batch}


def split_unstorable(docs: list[Document]) -> tuple[list[Document], dict[str, str]]:
    """Split off the documents BSON cannot hold (lone surrogates, ints past 64 bits, over
    16 MiB): retrying them would block the stream forever, so they go to the DLQ."""
    storable: list[Document] = []
    rejected: dict[str, str] = {}
    for doc in docs:
        try:
            size = len(bson.encode(doc))
        except (bson.errors.BSONError, UnicodeError, OverflowError) as exc:
            rejected[doc["_id"]] = f"not storable as BSON: {exc}"
            continue
        if size > MAX_DOCUMENT_BYTES:
            rejected[doc["_id"]] = f"document of {size} bytes exceeds {MAX_DOCUMENT_BYTES}"
        else:
            storable.append(doc)
    return storable, rejected


class TelemetryWriter:
    """Inserts attempt documents and counts them in the rollups, once each."""

    def __init__(self, db: AsyncDatabase[Document], dedup_window: timedelta) -> None:
        self.raw = db[PROVIDER_TELEMETRY]
        self.rollups = db[PROVIDER_ROLLUPS]
        self.dedup_window = dedup_window
        self._recovered: OrderedDict[ObjectId, None] = OrderedDict()

    async def write(
        self,
        events: list[TelemetryEvent],
        batch: ObjectId,
        *,
        first_attempt: bool = True,
        recover_others: bool = False,
    ) -> WriteResult:
        """Store ``events`` as write ``batch`` (one id per delivery, the same on every retry).

        With ``recover_others`` (entries reclaimed from a crashed consumer) the batches that
        inserted the events found already stored are counted again, which only counts what
        their crash left uncounted; a fresh delivery leaves them to the delivery that owns
        them, which may still be running.
        """
        result = WriteResult()
        if not events:
            return result
        docs, result.rejected = split_unstorable([to_document(event, batch) for event in events])
        duplicates, refused = await self._insert(docs) if docs else (set(), {})
        result.rejected |= refused
        if first_attempt:
            mine = [
                d for d in docs if d["_id"] not in duplicates and d["_id"] not in result.rejected
            ]
        else:  # an earlier attempt of this batch may have inserted some before failing
            mine = await self.raw.find({"batch": batch}, ROLLUP_SOURCE_FIELDS).to_list()
        if mine:
            await count_batch(self.rollups, mine, batch)
        result.written = len(mine)
        result.duplicates = len(docs) - len(refused) - len(mine)
        if recover_others and duplicates:
            result.recovered = await self._recover(duplicates, batch)
        return result

    async def _insert(self, docs: list[Document]) -> tuple[set[str], dict[str, str]]:
        """Insert; the ids already stored, and the ids the validator refused with the reason."""
        try:
            await self.raw.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            duplicates: set[str] = set()
            rejected: dict[str, str] = {}
            for error in exc.details["writeErrors"]:
                doc_id = docs[error["index"]]["_id"]
                if error["code"] == DUPLICATE_KEY and error.get("keyPattern", ID_KEY) == ID_KEY:
                    duplicates.add(doc_id)
                elif error["code"] == DOCUMENT_VALIDATION_FAILURE:
                    info = json.dumps(error.get("errInfo", {}), default=str)[:2000]
                    rejected[doc_id] = f"rejected by the MongoDB validator: {info}"
                else:
                    raise
            if exc.details.get("writeConcernErrors"):
                raise
            return duplicates, rejected
        return set(), {}

    async def _recover(self, duplicates: set[str], own: ObjectId) -> int:
        """Count again the other batches that stored these events; documents counted now."""
        found = self.raw.find({"_id": {"$in": list(duplicates)}}, {"batch": 1})
        others = {doc["batch"] async for doc in found if doc.get("batch") not in (None, own)}
        oldest = datetime.now(UTC) - self.dedup_window + RECOVERY_MARGIN
        counted = 0
        for other in others - set(self._recovered):
            if other.generation_time < oldest:
                log.warning("batch %s is older than the dedup window: not counted again", other)
                continue
            theirs = await self.raw.find({"batch": other}, ROLLUP_SOURCE_FIELDS).to_list()
            counted += await count_batch(self.rollups, theirs, other)
            self._recovered[other] = None
            if len(self._recovered) > RECENT_BATCHES:
                self._recovered.popitem(last=False)
        return counted

"""Batched, idempotent inserts of play documents: a duplicate ``_id`` is counted, not an error."""

from __future__ import annotations

import json
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from echotune.analytics.importer.report import ImportReport

Document = dict[str, Any]
DUPLICATE_KEY = 11000
DOCUMENT_VALIDATION_FAILURE = 121


class PlayWriter:
    """Collects plays and inserts them ``batch_size`` at a time (unordered)."""

    def __init__(
        self, collection: AsyncCollection[Document], report: ImportReport, batch_size: int = 1000
    ) -> None:
        self.collection, self.report, self.batch_size = collection, report, batch_size
        self.batch: list[tuple[str, str, Document]] = []

    async def add(self, source: str, where: str, doc: Document) -> None:
        """Queue one play; a full batch is written at once."""
        self.batch.append((source, where, doc))
        if len(self.batch) >= self.batch_size:
            await self.flush()

    async def flush(self) -> None:
        """Write the queued plays: new ones are imported, known ids are duplicates."""
        batch, self.batch = self.batch, []
        if not batch:
            return
        failed: dict[int, Document] = {}
        try:
            await self.collection.insert_many([doc for _, _, doc in batch], ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise
            for error in exc.details["writeErrors"]:
                if error["code"] not in (DUPLICATE_KEY, DOCUMENT_VALIDATION_FAILURE):
                    raise
                failed[error["index"]] = error
        for index, (source, where, _) in enumerate(batch):
            error = failed.get(index)
            if error is None:
                self.report.counts(source).imported += 1
            elif error["code"] == DUPLICATE_KEY:
                self.report.counts(source).duplicates += 1
            else:
                info = json.dumps(error.get("errInfo", {}), default=str)[:300]
                self.report.reject(source, where, "rejected_by_validator", info)

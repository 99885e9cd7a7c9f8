"""Idempotent startup migration of the telemetry collections: validators, indexes, TTLs.

Safe to run from several processes at once and on every start; a changed TTL setting is
applied with ``collMod`` (MongoDB 5.1+ also turns a plain index into a TTL index that way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from echotune.common.messages import BreakerState
from echotune.common.mongo import PROVIDER_ROLLUPS, PROVIDER_TELEMETRY, ensure_validator

log = logging.getLogger(__name__)
Document = dict[str, Any]
DAY_S = 86_400

_INT = ["int", "long"]
_NUM = ["double", "int", "long", "decimal"]
INT_GE0 = {"bsonType": _INT, "minimum": 0}
NUM_GE0 = {"bsonType": _NUM, "minimum": 0}
NULLABLE_NUM_GE0 = {"bsonType": [*_NUM, "null"], "minimum": 0}
NULLABLE_STR = {"bsonType": ["string", "null"]}
BOOL = {"bsonType": "bool"}
HISTOGRAM = {"bsonType": "object", "additionalProperties": INT_GE0}

TELEMETRY_SCHEMA: Document = {
    "bsonType": "object",
    "title": "One provider attempt (TelemetryEvent, camelCase; _id = eventId)",
    "required": [
        "_id",
        "schemaVersion",
        "requestId",
        "attempt",
        "provider",
        "model",
        "latencyMs",
        "success",
        "ts",
    ],
    "properties": {
        "_id": {"bsonType": "string", "minLength": 1},
        "schemaVersion": {"bsonType": _INT, "minimum": 1},
        "requestId": {"bsonType": "string", "minLength": 1},
        "attempt": {"bsonType": _INT, "minimum": 1},
        "provider": {"bsonType": "string", "minLength": 1},
        "model": {"bsonType": "string"},
        "latencyMs": NUM_GE0,
        "ttftMs": NULLABLE_NUM_GE0,
        "gapP50Ms": NULLABLE_NUM_GE0,
        "gapP95Ms": NULLABLE_NUM_GE0,
        "tokensIn": INT_GE0,
        "tokensOut": INT_GE0,
        "tokensPerS": NULLABLE_NUM_GE0,
        "success": BOOL,
        "errorCode": NULLABLE_STR,
        "breakerState": {"enum": [state.value for state in BreakerState]},
        "isRetry": BOOL,
        "isFailover": BOOL,
        "userId": NULLABLE_STR,
        "conversationId": NULLABLE_STR,
        "grounding": {"bsonType": ["object", "null"]},
        "confidence": {"bsonType": ["object", "null"]},
        "ts": {"bsonType": "date"},
        "batch": {"bsonType": "objectId"},
    },
}

ROLLUP_SCHEMA: Document = {
    "bsonType": "object",
    "title": "Attempts of one provider and model in one UTC minute",
    "required": ["_id", "provider", "model", "minute", "count"],
    "properties": {
        "_id": {"bsonType": "string"},
        "provider": {"bsonType": "string"},
        "model": {"bsonType": "string"},
        "minute": {"bsonType": "date"},
        "count": {"bsonType": _INT, "minimum": 1},
        "successes": INT_GE0,
        "errors": {"bsonType": "object", "additionalProperties": INT_GE0},
        "latencyMsSum": NUM_GE0,
        "ttftMsSum": NUM_GE0,
        "ttftCount": INT_GE0,
        "tokensIn": INT_GE0,
        "tokensOut": INT_GE0,
        "latencyHist": HISTOGRAM,
        "ttftHist": HISTOGRAM,
        "batches": {"bsonType": "array", "items": {"bsonType": "objectId"}},
        "lastBatchAt": {"bsonType": "date"},
    },
}


@dataclass(frozen=True)
class IndexSpec:
    """One index, recognised by its key whatever its name."""

    name: str
    keys: list[tuple[str, int]]
    ttl_s: int | None = None
    options: Document = field(default_factory=dict)


def telemetry_indexes(ttl_days: float) -> list[IndexSpec]:
    """Indexes of ``provider_telemetry``."""
    return [
        IndexSpec("provider_ts", [("provider", 1), ("ts", -1)]),
        IndexSpec("requestId", [("requestId", 1)]),
        IndexSpec("ts_ttl", [("ts", 1)], ttl_s=round(ttl_days * DAY_S)),
        IndexSpec("batch", [("batch", 1)]),
    ]


def rollup_indexes(ttl_days: float) -> list[IndexSpec]:
    """Indexes of ``provider_rollups_1m``; ``{minute: -1}`` doubles as the TTL index."""
    return [
        IndexSpec("minute_ttl", [("minute", -1)], ttl_s=round(ttl_days * DAY_S)),
        IndexSpec("provider_model_minute", [("provider", 1), ("model", 1), ("minute", -1)]),
        IndexSpec("lastBatchAt", [("lastBatchAt", 1)], options={"sparse": True}),
    ]


async def ensure_index(collection: AsyncCollection[Document], spec: IndexSpec) -> None:
    """Create the index unless one with the same key exists; align its TTL if it differs."""
    for name, info in (await collection.index_information()).items():
        if [(f, int(d)) for f, d in info["key"]] != spec.keys:
            continue
        if spec.ttl_s is not None and info.get("expireAfterSeconds") != spec.ttl_s:
            index = {"keyPattern": dict(spec.keys), "expireAfterSeconds": spec.ttl_s}
            await collection.database.command("collMod", collection.name, index=index)
            log.info("%s.%s: TTL set to %d s", collection.name, name, spec.ttl_s)
        return
    options = dict(spec.options)
    if spec.ttl_s is not None:
        options["expireAfterSeconds"] = spec.ttl_s
    await collection.create_index(spec.keys, name=spec.name, **options)
    log.info("%s: created index %s", collection.name, spec.name)


async def migrate(db: AsyncDatabase[Document], raw_ttl_days: float, rollup_ttl_days: float) -> None:
    """Bring both telemetry collections to the current validators and indexes."""
    await ensure_validator(db, PROVIDER_TELEMETRY, TELEMETRY_SCHEMA)
    await ensure_validator(db, PROVIDER_ROLLUPS, ROLLUP_SCHEMA)
    for spec in telemetry_indexes(raw_ttl_days):
        await ensure_index(db[PROVIDER_TELEMETRY], spec)
    for spec in rollup_indexes(rollup_ttl_days):
        await ensure_index(db[PROVIDER_ROLLUPS], spec)

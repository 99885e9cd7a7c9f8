"""Turning raw Redis stream entries into telemetry events, or into dead letters with a reason."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from faststream.redis.message import DATA_KEY
from faststream.redis.parser import BinaryMessageFormatV1
from pydantic import ValidationError

from echotune.common.messages import TelemetryEvent

DeadLetterKind = Literal[
    "bad_envelope", "bad_json", "bad_version", "invalid_event", "rejected", "too_many_deliveries"
]
DEAD_LETTER_KINDS: tuple[DeadLetterKind, ...] = get_args(DeadLetterKind)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry that cannot be written, with why and what it carried."""

    entry_id: str
    kind: DeadLetterKind
    reason: str
    payload: str


@dataclass(slots=True)
class DecodedBatch:
    """The entries of one delivery: valid events (with their entry ids) and dead letters."""

    entry_ids: list[str] = field(default_factory=list)
    events: list[TelemetryEvent] = field(default_factory=list)
    event_entries: dict[str, str] = field(default_factory=dict)
    """Event id → id of the entry that carried it."""
    texts: dict[str, str] = field(default_factory=dict)
    """Event id → the payload as received, for a dead letter."""
    dead: list[DeadLetter] = field(default_factory=list)
    repeats: int = 0
    """Entries repeating an event already in this delivery (written once)."""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _payload(fields: dict[bytes, bytes]) -> tuple[bytes | dict[str, str], str]:
    """The body the producer sent (FastStream envelope removed) and its text for the DLQ."""
    data = fields.get(DATA_KEY.encode())
    if data is None:  # written with a plain XADD, not through FastStream
        plain = {_text(k): _text(v) for k, v in fields.items()}
        return plain, json.dumps(plain, ensure_ascii=False)
    body, _headers = BinaryMessageFormatV1.parse(data)
    return body, _text(body)


def payload_text(fields: dict[bytes, bytes]) -> str:
    """The payload of an entry as text, whatever it holds (for a dead letter)."""
    try:
        return _payload(fields)[1]
    except Exception:
        return repr(fields)[:10_000]


def decode_entry(entry_id: str, fields: dict[bytes, bytes]) -> TelemetryEvent | DeadLetter:
    """One stream entry as an event, or as a dead letter saying what is wrong with it."""
    try:
        body, text = _payload(fields)
    except Exception as exc:  # the envelope itself is corrupt
        return DeadLetter(
            entry_id, "bad_envelope", f"unreadable entry: {exc}", repr(fields)[:10_000]
        )
    try:
        payload: Any = body if isinstance(body, dict) else json.loads(body)
    except ValueError as exc:
        return DeadLetter(entry_id, "bad_json", f"not JSON: {exc}", text)
    if not isinstance(payload, dict):
        return DeadLetter(entry_id, "bad_json", "not a JSON object", text)
    version = payload.get("schemaVersion", payload.get("schema_version"))
    if version is not None and version != 1:
        return DeadLetter(entry_id, "bad_version", f"unsupported schemaVersion {version!r}", text)
    try:
        return TelemetryEvent.model_validate(payload)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        return DeadLetter(entry_id, "invalid_event", f"invalid TelemetryEvent: {errors}", text)


def decode_batch(ids: list[bytes], entries: list[dict[bytes, bytes]]) -> DecodedBatch:
    """Decode every entry of a delivery; a bad entry never hides the good ones."""
    batch = DecodedBatch()
    for raw_id, fields in zip(ids, entries, strict=True):
        entry_id = raw_id.decode()
        batch.entry_ids.append(entry_id)
        decoded = decode_entry(entry_id, fields)
        if isinstance(decoded, DeadLetter):
            batch.dead.append(decoded)
        elif decoded.event_id in batch.event_entries:
            batch.repeats += 1
        else:
            batch.events.append(decoded)
            batch.event_entries[decoded.event_id] = entry_id
            batch.texts[decoded.event_id] = payload_text(fields)
    return batch

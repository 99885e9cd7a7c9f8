"""Layout of the per-minute provider rollups (``provider_rollups_1m``), as pure functions.

One document per ``(provider, model, minute)``, ``_id`` = ``"<provider>|<model>|<minute ISO>"``,
holding ``count``, ``successes``, ``errors.<code>``, ``latencyMsSum``, ``ttftMsSum``,
``ttftCount``, ``tokensIn``, ``tokensOut`` and the sparse histograms ``latencyHist.<i>`` /
``ttftHist.<i>`` of :mod:`echotune.common.histogram`.

The telemetry service (which owns the collection and its exactly-once writes) and the
analytics seed and benchmark all build rollups with these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from echotune.common.histogram import bucket_of

Document = dict[str, Any]
Increments = dict[str, tuple[Document, dict[str, float]]]


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


def increments(docs: Iterable[Mapping[str, Any]]) -> Increments:
    """Per rollup ``_id``: its identifying fields and the ``$inc`` of these attempt documents."""
    rollups: Increments = {}
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

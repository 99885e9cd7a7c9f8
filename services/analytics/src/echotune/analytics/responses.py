"""Building the ``{"data", "meta"}`` envelope of a successful answer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from echotune.analytics.params import Page, TimeRange

Document = dict[str, Any]


def window_meta(rng: TimeRange, *, with_tz: bool = True) -> Document:
    """The range as answered: ``from``, ``to``, the named window, the time zone."""
    meta: Document = {"from": rng.start, "to": rng.end, "window": rng.window}
    if with_tz:
        meta["time_zone"] = rng.time_zone
    return meta


def envelope(
    data: Any,
    *,
    rng: TimeRange | None = None,
    with_tz: bool = True,
    filters: Document | None = None,
    fields: Sequence[str] | None = None,
    page: Page | None = None,
    total: int | dict[str, int] | None = None,
    source: str | None = None,
    notes: list[str] | None = None,
) -> Document:
    """The answer: ``data`` and the meta fields that apply (unset ones are left out)."""
    meta: Document = {"generated_at": datetime.now(UTC)}
    if rng is not None:
        meta["window"] = window_meta(rng, with_tz=with_tz)
    if filters is not None:
        meta["filters"] = {key: value for key, value in filters.items() if value}
    if fields is not None:
        meta["fields"] = list(fields)
    if page is not None:
        meta.update(page=page.page, limit=page.limit)
    if total is not None:
        meta["total"] = total
    if source is not None:
        meta["source"] = source
    if notes:
        meta["notes"] = notes
    return {"data": data, "meta": meta}

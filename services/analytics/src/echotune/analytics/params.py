"""Parsing and checking query parameters: time ranges, time zones, pages, field lists."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from echotune.analytics.errors import bad_parameter
from echotune.common.time_zones import known_time_zones

ProviderWindow = Literal["1h", "24h", "7d", "30d"]
ListeningWindow = Literal["24h", "7d", "30d", "90d", "365d", "all"]
WINDOWS: dict[str, timedelta | None] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    "365d": timedelta(days=365),
    "all": None,
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open UTC range ``[start, end)``; ``window`` names it unless from/to were given."""

    start: datetime
    end: datetime
    window: str | None
    time_zone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list."""

    page: int
    limit: int

    @property
    def skip(self) -> int:
        return (self.page - 1) * self.limit


def time_zone(name: str, param: str = "tz") -> zoneinfo.ZoneInfo:
    """The IANA zone ``name``; 422 for an unknown one (naming the parameter ``param``)."""
    if name not in known_time_zones():
        raise bad_parameter(param, "unknown_time_zone", f"unknown IANA time zone {name!r}", name)
    return zoneinfo.ZoneInfo(name)


def parse_datetime(param: str, value: str, tz: zoneinfo.ZoneInfo) -> datetime:
    """An ISO 8601 date or datetime as UTC; without an offset it is local time in ``tz``."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    except ValueError:
        message = f"{param!r} is not an ISO 8601 date or datetime (e.g. 2024-01-31T23:00:00Z)"
        raise bad_parameter(param, "invalid_datetime", message, value) from None
    local = parsed.tzinfo is None
    if local:
        parsed = parsed.replace(tzinfo=tz)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999
        message = f"{param!r} is out of range"
        raise bad_parameter(param, "invalid_datetime", message, value) from None
    if local and utc.astimezone(tz).replace(tzinfo=None) != parsed.replace(tzinfo=None):
        message = f"{param!r} does not exist in {tz.key}: the clocks skip it (daylight saving)"
        raise bad_parameter(param, "nonexistent_time", message, value)
    return utc


def time_range(
    window: str,
    start: str | None,
    end: str | None,
    *,
    tz_name: str = "UTC",
    max_days: int,
    now: datetime | None = None,
) -> TimeRange:
    """The range asked for: ``from``/``to`` when given (``to`` defaults to now, ``from`` to
    ``to`` minus the window), else the named window ending now."""
    tz = time_zone(tz_name)
    upper = parse_datetime("to", end, tz) if end else (now or datetime.now(UTC))
    span = WINDOWS[window]
    default = EPOCH if span is None or upper - EPOCH < span else upper - span
    lower = parse_datetime("from", start, tz) if start else default
    if lower >= upper:
        name, message = (
            ("from", "'from' must be before 'to'")
            if start
            else ("to", "'to' must be after 1970-01-01T00:00:00Z")
        )
        raise bad_parameter(name, "invalid_range", message, {"from": start, "to": end})
    if start and upper - lower > timedelta(days=max_days):
        message = f"the range is longer than {max_days} days"
        raise bad_parameter("from", "range_too_long", message, {"from": start, "to": end})
    named = None if start else window
    return TimeRange(lower, upper, named, tz_name)


def page(number: int, limit: int | None, *, default: int, maximum: int, max_offset: int) -> Page:
    """A checked page: ``limit`` at most ``maximum``, no deeper than ``max_offset`` items."""
    size = default if limit is None else limit
    if size > maximum:
        raise bad_parameter("limit", "limit_too_large", f"limit must be at most {maximum}", size)
    result = Page(number, size)
    if result.skip > max_offset:
        message = f"page too deep: (page - 1) × limit must be at most {max_offset}"
        raise bad_parameter("page", "page_too_deep", message, number)
    return result


def field_list(
    raw: list[str] | None,
    allowed: tuple[str, ...],
    default: tuple[str, ...] | None = None,
    *,
    param: str = "fields",
    always: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """Names from repeated and/or comma-separated values, each one of ``allowed`` (or of
    ``always``: returned anyway, so asking for them is no error); ``param`` names them."""
    names = [name.strip() for value in raw or () for name in value.split(",") if name.strip()]
    if not names:
        return default if default is not None else allowed
    unknown = sorted({name for name in names if name not in allowed and name not in always})
    if unknown:
        names_of = f"{param.removesuffix('s')}(s)"
        message = f"unknown {names_of} {', '.join(unknown)}; allowed: {', '.join(allowed + always)}"
        raise bad_parameter(param, "unknown_field", message, unknown)
    return tuple(dict.fromkeys(name for name in names if name not in always))

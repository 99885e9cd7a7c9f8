"""IANA time zone names, as every service accepts them."""

from __future__ import annotations

import functools
import zoneinfo


@functools.cache
def known_time_zones() -> frozenset[str]:
    """IANA names this process knows (system tz database or the tzdata package)."""
    return frozenset(zoneinfo.available_timezones() | {"UTC"})

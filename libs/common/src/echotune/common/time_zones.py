"""IANA time zone names, as every service accepts them."""

from __future__ import annotations

import functools
import zoneinfo

NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})
"""Files of a system's tz database that name no place: ``localtime`` is whatever zone the
machine was set to, ``Factory`` a placeholder ("-00")."""


@functools.cache
def known_time_zones() -> frozenset[str]:
    """IANA names this process knows (system tz database or the tzdata package)."""
    return frozenset(zoneinfo.available_timezones() - NOT_ZONES | {"UTC"})

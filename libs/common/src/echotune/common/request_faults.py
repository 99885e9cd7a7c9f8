"""Provider calls refused for the request's own fault: they say nothing of the provider.

The worker's breakers and live figures ignore such a call, and analytics leaves it out of a
provider's success rate: both from here, with the error code a status is stored under.
"""

from __future__ import annotations

REQUEST_FAULT_STATUSES = frozenset({400, 401, 403, 404, 409, 413, 422})
"""4xx answers other than 429 (a rate limit is the provider's state, not the request's)."""


def status_code(status: int) -> str:
    """The error code of a call answered with HTTP ``status``."""
    return "rate_limited" if status == 429 else f"http_{status}"


REQUEST_FAULT_CODES = frozenset(status_code(status) for status in REQUEST_FAULT_STATUSES)

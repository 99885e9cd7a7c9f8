"""Provider calls refused for a fault of the request or of the deployment, not of the provider.

Neither says the provider is down, so the worker's breakers and live figures ignore both
(:data:`HEALTH_NEUTRAL_STATUSES`). Analytics leaves only the request's own out of a provider's
success rate (:data:`REQUEST_FAULT_CODES`): a revoked key or an unknown model is a failure to
serve, which the rate must show.
"""

from __future__ import annotations

REQUEST_FAULT_STATUSES = frozenset({400, 409, 413, 422})
"""The request itself is wrong (malformed, conflicting, too large, unprocessable)."""
SETUP_FAULT_STATUSES = frozenset({401, 403, 404})
"""The deployment's: the key, its permissions, the model's name."""
HEALTH_NEUTRAL_STATUSES = REQUEST_FAULT_STATUSES | SETUP_FAULT_STATUSES


def error_code_of(status: int) -> str:
    """The error code a call answered with HTTP ``status`` is stored under."""
    return "rate_limited" if status == 429 else f"http_{status}"


REQUEST_FAULT_CODES = frozenset(error_code_of(status) for status in REQUEST_FAULT_STATUSES)

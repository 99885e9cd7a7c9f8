"""Why a worker stopped an answer: the error code of a provider call it cut short.

None of them says anything of the provider's: the breaker and the live figures ignore such a
call, and analytics leaves it out of a provider's success rate (:data:`STOPPED`).
"""

from __future__ import annotations

CANCELLED = "cancelled"
"""The user's Stop (or the worker's shutdown)."""
CLIENT_GONE = "client_gone"
"""Nobody reads the answer any more: its resume window lapsed."""
FENCED = "fenced"
"""This worker's fence is no longer the job's (another worker took it over, or Redis lost
this take): it stops producing and writes nothing more."""
ENDED = "ended"
"""The answer was ended elsewhere (the gateway ended a cancelled answer): nothing to write."""

STOPPED = frozenset({CANCELLED, CLIENT_GONE, FENCED, ENDED})

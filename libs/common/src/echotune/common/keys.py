"""Every Redis key, stream, group and channel name used by echotune, in one place.

Keys used together (in one script or transaction) share a hash tag, so that they live in one
Redis Cluster slot: per request ``{request_id}``, per provider's breaker ``{provider}``, the
telemetry stream and its dead letters. Every other script and transaction uses one key.

All names live under a namespace (``ECHOTUNE_NAMESPACE``, default ``echotune``) so that
several deployments, or several tests, can share one Redis without seeing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

JOBS_GROUP = "llm-workers"
TELEMETRY_GROUP = "telemetry-writers"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one namespace."""

    namespace: str = "echotune"

    @property
    def jobs(self) -> str:
        """Stream of chat jobs, consumed by the ``llm-workers`` group."""
        return f"{self.namespace}:jobs"

    @property
    def telemetry(self) -> str:
        """Stream of one telemetry event per provider attempt."""
        return f"{self.namespace}:telemetry"

    @property
    def telemetry_dead_letters(self) -> str:
        """Telemetry events that failed validation, with the reason.

        Its hash tag is the telemetry stream's whole name: both live in one cluster slot, so
        dead letters and the acknowledgement of their batch are written in one transaction.
        """
        return f"{self.namespace}:telemetry:dlq{{{self.telemetry}}}"

    @property
    def workers_alive(self) -> str:
        """Sorted set: worker consumer name -> when it last said it was alive (ms)."""
        return f"{self.namespace}:workers"

    @property
    def cancel_channel(self) -> str:
        """Pub/Sub channel on which cancel requests are announced to all workers."""
        return f"{self.namespace}:cancel"

    def events(self, request_id: str) -> str:
        """Per-request stream of chat events (start, delta, …, done/error)."""
        return f"{self.namespace}:req:{{{request_id}}}:events"

    def meta(self, request_id: str) -> str:
        """Hash describing a request: fingerprint of its input, user, timestamps."""
        return f"{self.namespace}:req:{{{request_id}}}:meta"

    def cancel_flag(self, request_id: str) -> str:
        """Set when a cancel was asked; read by the worker that takes the job later."""
        return f"{self.namespace}:req:{{{request_id}}}:cancel"

    def reader(self, request_id: str) -> str:
        """Present while a client reads the stream or may still come back to resume it."""
        return f"{self.namespace}:req:{{{request_id}}}:reader"

    def relayed(self, request_id: str) -> str:
        """Written by a relay after each read, for its ``WAIT`` (``request_stream.ReadBarrier``)."""
        return f"{self.namespace}:req:{{{request_id}}}:relayed"

    def breaker(self, provider: str) -> str:
        """Hash with a provider's circuit-breaker state; ``:ok``/``:fail``/``:calls`` sorted
        sets beside it."""
        return f"{self.namespace}:breaker:{{{provider}}}"

    def live_stats(self, provider: str, minute: int) -> str:
        """Hash of one provider's counters and histograms for one minute (epoch minutes)."""
        return f"{self.namespace}:live:{provider}:{minute}"

    def profile(self, user_id: str, time_zone: str) -> str:
        """String: one listener's profile in one time zone as JSON (``null``: no plays),
        cached by the workers for ``PROFILE_CACHE_S``."""
        return f"{self.namespace}:profile:{{{user_id}}}:{time_zone}"

    @property
    def provider_selection(self) -> str:
        """Hash: user id (or ``*`` for everyone) → JSON ``{"provider", "model"}``."""
        return f"{self.namespace}:provider-selection"

    @property
    def api_keys(self) -> str:
        """Hash: API key id → JSON with the key's SHA-256, user id, name, revoked flag."""
        return f"{self.namespace}:api-keys"

    def sessions(self, key_id: str) -> str:
        """Sorted set of the live browser sessions issued from one API key, by expiry (ms)."""
        return f"{self.namespace}:sessions:{{{key_id}}}"

    def rate_limit(self, scope: str, subject: str) -> str:
        """Sorted set of one user's or IP's chat starts in the last minute, by start time."""
        return f"{self.namespace}:rate:{scope}:{subject}"

    def open_streams(self, user_id: str) -> str:
        """Sorted set of one user's open SSE responses, scored by when they lapse."""
        return f"{self.namespace}:open-streams:{user_id}"

    def gateway_wakeup(self, gateway_id: str) -> str:
        """Stream a gateway process writes to itself to wake its blocked multiplexed XREAD."""
        return f"{self.namespace}:gateway:{gateway_id}:wakeup"

"""Settings shared by every service; each service subclasses ``ServiceSettings``.

Service-specific variables carry the service's prefix (``ECHOTUNE_GATEWAY_…``); the
infrastructure every service shares has one fixed name (``ECHOTUNE_REDIS_URL``, …).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from echotune.common.keys import Keys
from echotune.common.logs import LogFormat


def shared(name: str) -> AliasChoices:
    """Read a shared setting from ``ECHOTUNE_<NAME>`` whatever the service's prefix."""
    return AliasChoices(f"ECHOTUNE_{name}")


class ServiceSettings(BaseSettings):
    """Infrastructure settings common to all services."""

    # "inf" is a float: it passed every bound, then failed a service at start (int(inf))
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=shared("REDIS_URL"))
    mongodb_url: str = Field(
        "mongodb://127.0.0.1:27017/echotune",
        validation_alias=shared("MONGODB_URL"),
        description="MongoDB; the database is the URL's path (default ``echotune``)",
    )
    namespace: str = Field(
        "echotune",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        validation_alias=shared("NAMESPACE"),
        description="Prefix of every Redis key; lets deployments or tests share one Redis",
    )
    log_level: str = Field("INFO", validation_alias=shared("LOG_LEVEL"))
    log_format: LogFormat = Field(
        "text",
        validation_alias=shared("LOG_FORMAT"),
        description="``json``: one JSON object per line with request id and trace id",
    )
    resume_window_s: float = Field(
        30.0,
        gt=0,
        validation_alias=shared("RESUME_WINDOW_S"),
        description="How long an answer keeps streaming into Redis without a reader",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=10,
        validation_alias=shared("REDIS_WAIT_REPLICAS"),
        description="Redis replicas that must hold a chat's opening and its final event before "
        "they count (WAIT): a failover then very rarely loses them; 0 for a Redis without "
        "replicas",
    )
    redis_wait_ms: int = Field(
        500,
        ge=1,
        le=2000,
        validation_alias=shared("REDIS_WAIT_MS"),
        description="One wait for those replicas (below Redis' socket timeout, 5 s); past it "
        "the write waits again while they are online (ROLE), else counts anyway (logged)",
    )
    redis_wait_max_ms: int = Field(
        3000,
        ge=1,
        le=60_000,
        validation_alias=shared("REDIS_WAIT_MAX_MS"),
        description="Longest a write, or a relay read, waits for online replicas that lag "
        "(REDIS_WAIT_MS at a time); past it, it counts anyway (logged, counted): a replica "
        "paused or cut off stalls starts, finals and relayed events this long at most",
    )
    key_grace_s: int = Field(
        60,
        ge=1,
        validation_alias=shared("KEY_GRACE_S"),
        description="How long a request's keys outlive the longest time they can be used",
    )

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

"""Gateway settings (environment prefix ``ECHOTUNE_GATEWAY_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from echotune.common.provider_settings import ProviderSettings
from echotune.common.settings import ServiceSettings, shared


class GatewaySettings(ServiceSettings, ProviderSettings):
    model_config = SettingsConfigDict(
        env_prefix="ECHOTUNE_GATEWAY_", extra="ignore", populate_by_name=True
    )

    heartbeat_s: float = Field(20.0, ge=0.05, le=300, description="Idle time before a keepalive")
    max_message_chars: int = Field(16_000, ge=1)
    max_stream_s: float = Field(600.0, gt=0, description="Longest an answer may stream")
    stream_retry_ms: int = Field(1000, ge=0, description="EventSource reconnect delay hint")
    max_backlog: int = Field(
        1000, ge=1, description="Queued jobs not yet taken by a worker before new chats get 429"
    )
    backlog_retry_after_s: int = Field(2, ge=1)
    analytics_url: str = Field("http://127.0.0.1:8083", description="The analytics service")
    analytics_timeout_s: float = Field(10.0, gt=0)
    auth_enabled: bool = Field(True, description="Require an API key or a session on /api and /v1")
    dev_api_key: SecretStr | None = Field(
        None, validation_alias=shared("DEV_API_KEY"), description="Registered for user `dev`"
    )
    session_secret: SecretStr | None = Field(
        None, description="Signs browser sessions; set the same on every gateway (random if unset)"
    )
    session_ttl_s: int = Field(12 * 3600, ge=60)
    cookie_secure: bool = Field(False, description="Send the session cookie over HTTPS only")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed browser origins")
    max_body_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="A request body's bytes at most: the default fits a message of "
        "max_message_chars however JSON escapes it (12 bytes a character at most)",
    )
    chat_starts_per_minute_user: int = Field(30, ge=1)
    chat_starts_per_minute_ip: int = Field(120, ge=1)
    max_open_streams_per_user: int = Field(20, ge=1)
    pickup_timeout_s: float = Field(
        10.0, gt=0, description="A job untaken this long while no worker is alive: `no_worker`"
    )
    cancel_grace_s: float = Field(
        0.8, gt=0, description="A cancelled answer its worker has not ended by then is ended here"
    )
    jobs_trim_s: float = Field(30.0, gt=0, description="How often acknowledged jobs are trimmed")
    relay_block_ms: int = Field(5000, ge=10, description="Longest blocking XREAD of the relay")
    relay_batch: int = Field(256, ge=1, description="Entries read per stream per XREAD")
    relay_wait_ms: int = Field(
        50,
        ge=1,
        le=2000,
        description="With REDIS_WAIT_REPLICAS: how long one relay read waits for a replica to "
        "hold what it read; past it, it waits again while a replica is online (REDIS_WAIT_MAX_MS "
        "in all), else it is handed out anyway (a replica in sync answers within a round trip; "
        "a shard left without one costs each of its reads this long)",
    )
    relay_round_ms: float = Field(
        5.0,
        ge=0,
        le=100,
        description="Least time between two reads of the relay (one Redis) from 100 open "
        "streams on, proportionally less below: busy, one read brings the entries of many "
        "streams; idle, an entry is read as it comes",
    )

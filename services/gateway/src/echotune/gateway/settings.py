"""Gateway settings (environment prefix ``ECHOTUNE_GATEWAY_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from echotune.common.settings import ProviderSettings, ServiceSettings


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
    relay_block_ms: int = Field(5000, ge=10, description="Longest blocking XREAD of the relay")
    relay_batch: int = Field(256, ge=1, description="Entries read per stream per XREAD")

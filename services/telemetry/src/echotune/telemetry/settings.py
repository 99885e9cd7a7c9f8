"""Telemetry service settings (environment prefix ``ECHOTUNE_TELEMETRY_``)."""

from __future__ import annotations

import os
import socket
import uuid

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from echotune.common.settings import ServiceSettings


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class TelemetrySettings(ServiceSettings):
    """Batching, reclaiming, retries and retention of the telemetry writer."""

    model_config = SettingsConfigDict(
        env_prefix="ECHOTUNE_TELEMETRY_", extra="ignore", populate_by_name=True
    )

    consumer: str = Field(default_factory=_consumer_name, description="Consumer name in the group")
    batch_size: int = Field(
        500, ge=1, le=10_000, description="Most events read and written at once"
    )
    batch_wait_ms: int = Field(
        200, ge=1, le=60_000, description="Longest blocking read when the stream is empty"
    )
    claim_idle_ms: int = Field(
        30_000,
        ge=100,
        description="Pending events idle this long are reclaimed from their (crashed) consumer",
    )
    claim_poll_ms: int = Field(
        1_000, ge=10, description="Pause of the reclaimer when nothing is idle enough to claim"
    )
    max_deliveries: int = Field(
        10,
        ge=2,
        description="A reclaimed entry delivered this often without being written is dead-lettered",
    )
    retry_base_s: float = Field(0.2, gt=0, description="First back-off after a failed write")
    retry_cap_s: float = Field(5.0, gt=0, description="Longest back-off between write attempts")
    mongo_timeout_ms: int = Field(
        5_000, ge=100, description="MongoDB server selection and connect timeout"
    )
    raw_ttl_days: float = Field(30, gt=0, description="Lifetime of one document per attempt")
    rollup_ttl_days: float = Field(400, gt=0, description="Lifetime of the per-minute rollups")
    dedup_window_h: float = Field(
        24,
        gt=1,
        description="How long rollups remember the batches they counted (redelivery window)",
    )
    dlq_maxlen: int = Field(100_000, ge=100, description="Approximate bound of the DLQ stream")
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="How long a stopping process lets its current batch finish"
    )

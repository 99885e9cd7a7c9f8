"""Worker settings (environment prefix ``ECHOTUNE_WORKER_``)."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from echotune.common.provider_settings import ProviderSettings
from echotune.common.settings import ServiceSettings


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(ServiceSettings, ProviderSettings):
    model_config = SettingsConfigDict(
        env_prefix="ECHOTUNE_WORKER_", extra="ignore", populate_by_name=True
    )

    consumer: str = Field(default_factory=_consumer_name, description="Consumer name in the group")
    concurrency: int = Field(64, ge=1, le=10_000, description="Jobs one process runs at once")
    events_maxlen: int = Field(
        50_000, ge=100, description="Bound of a per-request stream (above the longest answer)"
    )
    telemetry_maxlen: int = Field(1_000_000, ge=1000, description="Bound of the telemetry stream")
    reader_check_s: float = Field(1.0, gt=0, description="How often abandoned streams are sought")
    retry_attempts: int = Field(3, ge=1, le=10, description="Attempts per provider")
    retry_base_s: float = Field(0.25, gt=0)
    retry_cap_s: float = Field(8.0, gt=0)
    retry_after_cap_s: float = Field(30.0, gt=0, description="Longest Retry-After honoured")
    continue_on_failure: bool = Field(
        False, description="After a mid-stream failure continue on the next provider"
    )
    reclaim_idle_s: float = Field(
        15.0, gt=0, description="A job pending this long without a live owner is taken over"
    )
    drain_s: float = Field(20.0, ge=0, description="On SIGTERM: how long in-flight jobs may finish")
    context_max_chars: int = Field(
        6000, ge=0, description="Bound of the conversation context added to a prompt"
    )
    context_keep_turns: int = Field(20, ge=2, description="Messages kept per conversation")
    context_timeout_s: float = Field(0.5, gt=0, description="Longest wait for the context")
    profile_timeout_s: float = Field(
        0.5, gt=0, description="Longest wait for the listening profile (read with the context)"
    )
    profile_query_timeout_s: float = Field(
        5.0, gt=0, description="A profile read that outlives the wait may finish (for the cache)"
    )
    profile_cache_s: int = Field(60, ge=1, description="How long a profile is cached in Redis")
    profile_plays: int = Field(1000, ge=1, le=100_000, description="Latest plays a profile covers")
    profile_top: int = Field(5, ge=1, le=20, description="Artists, genres, recent tracks listed")
    profile_max_chars: int = Field(
        1200, ge=0, description="Bound of the profile's part of the system prompt"
    )
    http_transport: Literal["lean", "httpx"] = Field(
        "lean",
        description="Providers' HTTP/1.1 transport: lean (httptools, providers/transport.py) "
        "or httpx's own (httpcore)",
    )
    append_hold_ms: float = Field(
        50.0,
        ge=0,
        le=200,  # well below the gateway's cancel grace: a cancelled final waits one round
        description="Least time between two append rounds of a process streaming twice "
        "append_hold_from answers, proportionally less down to none at append_hold_from: busy, "
        "a request's tokens merge into fewer entries; idle, a token goes as it comes",
    )
    append_hold_from: int = Field(100, ge=1, description="Answers streaming before rounds wait")
    read_pace_ms: float = Field(
        150.0,
        ge=0,
        le=200,
        description="Least time between two wake-ups of an answer's upstream reader in a process "
        "streaming twice read_pace_from answers, proportionally less down to none at "
        "read_pace_from: busy, the tokens that came meanwhile are read, parsed and appended "
        "together (one entry); the first wake-ups (a provider's preamble, the first token) and "
        "the end never wait; 0 turns it off",
    )
    read_pace_from: int = Field(50, ge=1, description="Answers streaming before reads are paced")
    outcome_hold_ms: float = Field(
        100.0,
        ge=0,
        le=1000,
        description="Least time between two records of a process's counted successes, and "
        "between two acknowledgements of its finished jobs, when it streams twice "
        "outcome_hold_from answers, proportionally less down to none at outcome_hold_from: busy, "
        "a success that is no probe's (it changes no breaker's state) is recorded with the "
        "others (breaker window, live figures) in one round trip, and finished jobs' entries go "
        "in one XACK; every other outcome goes at once; 0 turns it off",
    )
    outcome_hold_from: int = Field(
        50, ge=1, description="Answers streaming before successes are recorded together"
    )
    stamp_tokens: bool = Field(False, description="Stamp each delta with monotonic_ns (bench)")

    @model_validator(mode="after")
    def _probe_outlives_the_prompts_build(self) -> WorkerSettings:
        """A probe asked with the take is held through the prompt's build, and first renewed a
        third of its lease into the call: a longer build would let the lease lapse."""
        build_s = max(self.context_timeout_s, self.profile_timeout_s)
        if build_s > self.breaker.probe_timeout_s / 2:
            raise ValueError(
                f"ECHOTUNE_BREAKER_PROBE_TIMEOUT_S ({self.breaker.probe_timeout_s:g}) must be at "
                f"least twice the prompt's longest build ({build_s:g} s: "
                "ECHOTUNE_WORKER_CONTEXT_TIMEOUT_S, ECHOTUNE_WORKER_PROFILE_TIMEOUT_S)"
            )
        return self

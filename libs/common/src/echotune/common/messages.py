"""Versioned message contracts between echotune services.

* ``ChatJob``: gateway → ``Keys.jobs`` stream → llm-worker.
* Chat events (``StartEvent`` … ``ErrorEvent``): llm-worker (and the gateway for ``start``)
  → per-request ``Keys.events(request_id)`` stream → gateway → client as SSE frames.
  A stream entry has three fields: ``v`` (schema version), ``type`` and ``data`` — the JSON
  object sent to the client as the SSE ``data:`` line, verbatim.
* ``TelemetryEvent``: llm-worker → ``Keys.telemetry`` stream → telemetry service.

A consumer refuses an entry whose major ``schema_version`` it does not know.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from echotune.common.completion import CompletionFeatures, TokenLogprob, ToolCall, ToolCallDelta
from echotune.common.time_zones import known_time_zones

SCHEMA_VERSION: Literal[1] = 1
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,63}$"
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]
CONVERSATION_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
"""A conversation id, unanchored (a path segment of the analytics pass-through too)."""
CONVERSATION_ID_RULE = (
    "1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or a digit"
)
ConversationId = Annotated[str, Field(pattern=f"^{CONVERSATION_ID}$")]


def _known_time_zone(name: str) -> str:
    if name not in known_time_zones():
        raise ValueError(f"unknown IANA time zone {name!r}")
    return name


TimeZoneName = Annotated[str, Field(max_length=64), AfterValidator(_known_time_zone)]


def new_request_id() -> str:
    """A fresh request id (32 hex characters)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every contract: immutable, unknown fields ignored (forward compatible)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


# --- chat job -----------------------------------------------------------------------------


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ChatMessage(Contract):
    role: Role
    content: str
    tool_calls: list[ToolCall] | None = Field(None, description="Assistant only: calls it made")
    tool_call_id: str | None = Field(None, description="Tool only: the call this answers")


class ChatOptions(Contract):
    """Generation options a client may set per request."""

    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    stop: list[str] | None = Field(None, max_length=4)
    use_context: bool = Field(
        True,
        description="Send the conversation's earlier turns and add this one to it; false: "
        "answered alone, off the record",
    )
    use_profile: bool = Field(True, description="Ground the answer in the listening profile")
    time_zone: TimeZoneName | None = Field(
        None, description="The listener's IANA time zone (listening hours); default UTC"
    )
    continue_on_failure: bool | None = Field(
        None, description="After a mid-stream failure, continue on the next provider"
    )


class ChatJob(Contract):
    """One chat answer to produce: written by the gateway, consumed by one worker."""

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: RequestId
    conversation_id: ConversationId | None = None
    new_conversation: bool = Field(False, description="The id was just made: no context yet")
    user_id: str = "anonymous"
    messages: list[ChatMessage] = Field(min_length=1)
    provider: str
    model: str
    fallbacks: list[str] = Field(default_factory=list)
    options: ChatOptions = Field(default_factory=ChatOptions)
    features: CompletionFeatures | None = Field(
        None, description="Tools, JSON output, logprobs… (OpenAI door only)"
    )
    created_at: datetime = Field(default_factory=utcnow)
    deadline_at: float = Field(description="Unix time after which the answer is abandoned")
    traceparent: str | None = Field(
        None,
        max_length=128,
        description="W3C trace context of the job's publication (tracing on); a malformed one "
        "is ignored",
    )


# --- chat events -------------------------------------------------------------------------


class EventType(StrEnum):
    START = "start"
    DELTA = "delta"
    RETRY = "retry"
    FAILOVER = "failover"
    DONE = "done"
    ERROR = "error"


TERMINAL_EVENTS = frozenset({EventType.DONE, EventType.ERROR})


class StartEvent(Contract):
    """First event of every stream, written by the gateway when it accepts the request."""

    type: Literal[EventType.START] = EventType.START
    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: str
    conversation_id: str | None = None
    provider: str
    model: str
    provider_is_demo: bool = False


class DeltaEvent(Contract):
    """A piece of the answer: text, and (OpenAI door only) tool-call pieces and logprobs."""

    type: Literal[EventType.DELTA] = EventType.DELTA
    delta: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[TokenLogprob] | None = Field(None, description="Of the tokens of `delta`")
    t: int | None = Field(None, description="Producer's monotonic_ns stamp (benchmarks only)")


class RetryEvent(Contract):
    """The provider call failed before its first token and will be tried again."""

    type: Literal[EventType.RETRY] = EventType.RETRY
    provider: str
    attempt: int = Field(description="The attempt that failed (1-based)")
    delay_ms: int
    reason: str


EVENTS_LOST = "events_lost"
"""A failover's reason when Redis lost entries and the worker replays its whole answer."""


class FailoverEvent(Contract):
    """The answer moves on to another provider."""

    type: Literal[EventType.FAILOVER] = EventType.FAILOVER
    from_provider: str
    to_provider: str
    to_model: str
    reason: str
    discard_partial: bool = Field(
        False, description="Text received so far must be discarded: the answer starts again"
    )
    continues_partial: bool = Field(
        False, description="The next provider continues the partial text"
    )


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"


class Usage(Contract):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Timings(Contract):
    ttft_ms: float | None = None
    total_ms: float


class ContextUsage(Contract):
    turns: int = 0
    chars: int = 0


class Grounded(Contract):
    """Base of what an answer was grounded in: snake_case in events, camelCase in telemetry."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )


class ProfileStatus(StrEnum):
    USED = "used"
    """Features of the listening profile went into the system prompt."""
    OFF = "off"
    """The request asked for no profile (``use_profile: false``)."""
    EMPTY = "empty"
    """The listener has no plays."""
    SKIPPED = "skipped"
    """Not read in time, or MongoDB unavailable: the answer went on without it."""


FeatureValue = int | float | str | list[str] | list[int]


class ProfileFeature(Grounded):
    """One listening feature put in the prompt, as the prompt states it."""

    name: str
    value: FeatureValue


class ProfileUse(Grounded):
    status: ProfileStatus
    reason: str | None = Field(None, description="Why it was skipped: timeout, mongodb_…")
    source: Literal["cache", "mongodb"] | None = None
    load_ms: float | None = Field(None, ge=0, description="Time spent getting it")
    features: list[ProfileFeature] = Field(default_factory=list)


class PromptSummary(Grounded):
    """What was sent to the provider, in short (never secrets: they are not in prompts)."""

    system_excerpt: str = Field(
        description="The start of echotune's system prompt (empty: the request brought its own)"
    )
    system_chars: int = Field(ge=0, description="Length of echotune's system prompt")
    messages: int = Field(ge=0, description="Messages sent, system prompt included")
    chars: int = Field(ge=0, description="Characters of all messages sent")


class LogprobsUse(StrEnum):
    REQUESTED = "requested"
    NOT_REQUESTED = "not_requested"
    """The provider could give them but is not configured to (``logprobs`` in its config)."""
    NOT_OFFERED = "not_offered"
    """The provider's kind has no token probabilities (anthropic, demo)."""


class Grounding(Grounded):
    """What the answer was grounded in."""

    profile: ProfileUse
    context_turns: int = Field(0, ge=0)
    prompt: PromptSummary
    logprobs: LogprobsUse = LogprobsUse.NOT_OFFERED


class Confidence(Grounded):
    """Token probabilities of the answer: the model's certainty about its wording, not a
    measure of correctness."""

    mean: float = Field(ge=0, le=1, description="Mean probability of the answer's tokens")
    min: float = Field(ge=0, le=1, description="Probability of its least likely token")
    tokens: int = Field(ge=1, description="Tokens with a probability")


class DoneEvent(Contract):
    """Last event of a stream that ended normally (including cancellation)."""

    type: Literal[EventType.DONE] = EventType.DONE
    finish_reason: FinishReason
    provider: str
    model: str
    usage: Usage = Field(default_factory=Usage)
    timings: Timings
    attempts: int = 1
    context: ContextUsage = Field(default_factory=ContextUsage)
    grounding: Grounding | None = None
    confidence: Confidence | None = Field(
        None, description="Null when the provider gave no token probabilities"
    )


class ErrorCode(StrEnum):
    PROVIDER_ERROR = "provider_error"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    ALL_PROVIDERS_FAILED = "all_providers_failed"
    PARTIAL_ANSWER = "partial_answer"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    WORKER_LOST = "worker_lost"
    SHUTDOWN = "shutdown"
    INVALID_JOB = "invalid_job"
    NO_WORKER = "no_worker"
    INTERNAL = "internal_error"
    REQUEST_REFUSED = "request_refused"


class ErrorEvent(Contract):
    """Last event of a stream that failed."""

    type: Literal[EventType.ERROR] = EventType.ERROR
    code: ErrorCode
    message: str
    partial: bool = Field(False, description="Text was streamed before the failure")
    provider: str | None = None
    retryable: bool = False


def internal_error(*, partial: bool = False) -> ErrorEvent:
    """The error an answer ends with when its job failed on a bug (not a provider's fault)."""
    return ErrorEvent(
        code=ErrorCode.INTERNAL, message="the answer failed on an internal error", partial=partial
    )


def deadline_exceeded(*, partial: bool = False) -> ErrorEvent:
    """The error an answer ends with when it outlives its deadline (worker's or gateway's)."""
    return ErrorEvent(
        code=ErrorCode.DEADLINE_EXCEEDED, message="the answer took too long", partial=partial
    )


ChatEvent = Annotated[
    StartEvent | DeltaEvent | RetryEvent | FailoverEvent | DoneEvent | ErrorEvent,
    Field(discriminator="type"),
]
CHAT_EVENT_ADAPTER: TypeAdapter[ChatEvent] = TypeAdapter(ChatEvent)


def encode_event(event: ChatEvent) -> dict[str, str]:
    """Fields of the Redis stream entry carrying ``event``."""
    data = event.model_dump_json(exclude={"type"}, exclude_none=True)
    return {"v": str(SCHEMA_VERSION), "type": event.type.value, "data": data}


def decode_event(fields: dict[str, str]) -> ChatEvent:
    """Inverse of :func:`encode_event`; raises ``ValueError`` on an unknown version."""
    if fields.get("v") != str(SCHEMA_VERSION):
        raise ValueError(f"unsupported chat event schema version {fields.get('v')!r}")
    payload = json.loads(fields["data"])
    payload["type"] = fields["type"]
    return CHAT_EVENT_ADAPTER.validate_python(payload)


# --- telemetry ---------------------------------------------------------------------------


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class TelemetryEvent(BaseModel):
    """One provider attempt. Field names are camelCase on the wire and in MongoDB."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    request_id: str
    attempt: int = Field(ge=1)
    provider: str
    model: str
    latency_ms: float = Field(ge=0)
    ttft_ms: float | None = Field(None, ge=0)
    gap_p50_ms: float | None = Field(None, ge=0)
    gap_p95_ms: float | None = Field(None, ge=0)
    tokens_in: int = Field(0, ge=0)
    tokens_out: int = Field(0, ge=0)
    tokens_per_s: float | None = Field(None, ge=0)
    success: bool
    error_code: str | None = None
    breaker_state: BreakerState = BreakerState.CLOSED
    is_retry: bool = False
    is_failover: bool = False
    user_id: str | None = None
    conversation_id: str | None = None
    grounding: Grounding | None = None
    confidence: Confidence | None = Field(None, description="Of this attempt's tokens")
    ts: datetime = Field(default_factory=utcnow)


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0

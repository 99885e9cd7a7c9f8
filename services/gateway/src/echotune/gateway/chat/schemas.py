"""Request bodies and documented event schemas of the chat API."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from echotune.common.messages import (
    ChatOptions,
    ConversationId,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    FailoverEvent,
    RetryEvent,
    StartEvent,
    TimeZoneName,
)

STREAM_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"


class ChatStreamOptions(ChatOptions):
    """The options a client sends: a misspelt one, or one of another JSON type (``true`` or
    ``"5"`` for a number), is refused, not ignored or coerced (the job's contract ignores
    unknown fields, for workers older or newer than the gateway)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def unicode_only(data: Any) -> None:
    """Refuse text Python holds but UTF-8 cannot: a lone surrogate (valid JSON, ``"\\ud800"``)."""
    if isinstance(data, str):
        try:
            data.encode()
        except UnicodeEncodeError as exc:
            raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from exc
    elif isinstance(data, dict):
        for key, value in data.items():
            unicode_only(key)
            unicode_only(value)
    elif isinstance(data, list):
        for value in data:
            unicode_only(value)


class ChatStreamRequest(BaseModel):
    """Body of ``POST /api/chat/stream``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        unicode_only(data)
        return data

    message: str = Field(
        description="The user's message; empty or blank is `422 empty_message`, as on GET"
    )
    conversation_id: ConversationId | None = None
    provider: str | None = Field(None, description="Provider name; default: current selection")
    model: str | None = Field(None, description="Model of that provider; default: its default")
    options: ChatStreamOptions = Field(default_factory=ChatStreamOptions)


class StreamQuery(BaseModel):
    """Query of ``GET /api/chat/stream``: an unknown parameter is refused, as on ``POST``
    (``max_tokens=2`` was dropped without a word). Query values are text: not strict."""

    model_config = ConfigDict(extra="forbid")

    message: str | None = Field(None, description="Omit to attach to request_id")
    conversation_id: ConversationId | None = None
    provider: str | None = Field(None, max_length=64)
    model: str | None = Field(None, max_length=200)
    use_context: bool = True
    use_profile: bool = Field(True, description="Ground it in the listening profile")
    time_zone: TimeZoneName | None = Field(None, description="IANA, e.g. Europe/Paris")
    request_id: str | None = Field(None, description="Also via X-Request-Id")
    last_event_id: str | None = Field(
        None,
        pattern=STREAM_ID_PATTERN,
        validation_alias=AliasChoices("last_event_id", "lastEventId"),
        description="Also via Last-Event-ID; `lastEventId` is event-source-polyfill's name",
    )


class CancelResponse(BaseModel):
    request_id: str
    status: str = Field(description="`cancelling` or `finished` (nothing left to cancel)")


SSE_EVENT_MODELS: dict[str, type[BaseModel]] = {
    "start": StartEvent,
    "delta": DeltaEvent,
    "retry": RetryEvent,
    "failover": FailoverEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
}

SSE_DESCRIPTION = """\
A `text/event-stream`. Every frame has `id:` (its Redis stream entry id, usable as
`Last-Event-ID`), `event:` (one of the types below) and one `data:` line of JSON:

| event | data |
|---|---|
| `start` | request id, conversation id, provider and model; always first, sent at once |
| `delta` | `{"delta": "text"}` — a piece of the answer |
| `retry` | a failed attempt before the first token: provider, attempt, delay_ms, reason |
| `failover` | moving to another provider: from, to, reason, whether to discard partial text |
| `done` | last frame: finish_reason (`stop`, `length`, `cancelled`, …), usage, timings |
| `error` | last frame: code, message, whether the answer is partial |

Lines starting with `:` are keepalive comments, sent after `heartbeat_s` of silence.
After `done` or `error` the server closes the response. Reconnecting with
`Last-Event-ID` and the same `request_id` replays exactly the events after that id; a
reconnect after the final event is answered `204 No Content`.
"""


def sse_openapi_response() -> dict[int | str, dict[str, object]]:
    schemas = {name: model.model_json_schema() for name, model in SSE_EVENT_MODELS.items()}
    return {
        200: {
            "description": SSE_DESCRIPTION,
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string", "description": "SSE frames"},
                    "examples": {
                        "stream": {
                            "value": 'id: 1-0\nevent: start\ndata: {"request_id": "…"}\n\n'
                            'id: 1-1\nevent: delta\ndata: {"delta": "Hello"}\n\n'
                        }
                    },
                    "x-event-schemas": schemas,
                }
            },
        },
        204: {"description": "Reconnect after the final event: nothing more to send"},
        409: {"description": "The request id is in use for a different message"},
        422: {"description": "Invalid input (empty or over-long message, unknown provider…)"},
    }

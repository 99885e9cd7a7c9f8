"""OpenAI Chat Completions request and response shapes (the subset we serve).

Unknown fields are refused (400 naming the field), never ignored; a field sent as ``null`` counts
as not sent, as OpenAI treats it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from echotune.common.completion import ResponseFormat, ToolCall, ToolChoice, ToolSpec
from echotune.gateway.chat.schemas import unicode_only

MODEL_RULE = """\
`model` selects provider and model: `provider/model` (e.g. `openai/gpt-4o-mini`), a bare
provider name (its default model), or a bare model name (the first provider offering it,
the default provider first)."""


class Strict(BaseModel):
    """Refuses unknown fields and values of another JSON type (``"5"`` or ``true`` for a
    number, ``"yes"`` for a boolean); drops fields sent as ``null``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = Field(
        None, min_length=1, max_length=128, description="Assistant only"
    )
    tool_call_id: str | None = Field(
        None, min_length=1, max_length=4096, description="Tool only: the call it answers"
    )

    @model_validator(mode="after")
    def _fields_fit_the_role(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages have tool_calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("tool messages, and only they, have a tool_call_id")
        if self.content is None and not self.tool_calls:
            raise ValueError("content is required (unless an assistant message has tool_calls)")
        return self

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Strict):
    include_usage: bool = False


class ChatCompletionRequest(Strict):
    """The fields echotune serves; any other field is refused with a 400 naming it."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        unicode_only(data)
        return data

    model: str = Field(min_length=1, max_length=200, description=MODEL_RULE)
    messages: list[Message] = Field(min_length=1, max_length=500)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32_768)
    stop: str | list[str] | None = None
    user: str | None = Field(None, max_length=256)
    n: int = Field(1, ge=1, le=1, description="Only one choice is supported")
    stream_options: StreamOptions | None = None
    tools: list[ToolSpec] | None = Field(None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

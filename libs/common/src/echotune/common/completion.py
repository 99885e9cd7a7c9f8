"""OpenAI Chat Completions features beyond plain text, as jobs and events carry them.

Shapes follow OpenAI's wire format (a ``ToolCallDelta`` dumps to exactly the object OpenAI
streams in ``choices[].delta.tool_calls``), so the OpenAI door relays them unchanged and the
worker translates them for the other provider kinds. What each kind can honour lives in
``capabilities.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
ToolName = Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]


class Shape(BaseModel):
    """Base: immutable, unknown fields ignored, serialized with OpenAI's field names."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, serialize_by_alias=True
    )


# --- requests ------------------------------------------------------------------------------


class FunctionSpec(Shape):
    name: ToolName
    description: str | None = Field(None, max_length=4096)
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments")
    strict: bool | None = None


class ToolSpec(Shape):
    """A tool the model may call (only function tools exist in Chat Completions)."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class FunctionName(Shape):
    name: ToolName


class NamedToolChoice(Shape):
    """Force a call of this function."""

    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(Shape):
    name: ToolName
    description: str | None = Field(None, max_length=4096)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Shape):
    """``text`` (the default), ``json_object`` (any JSON object) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`json_schema` is required with, and only with, type json_schema")
        return self

    @property
    def wants_json(self) -> bool:
        return self.type != "text"

    @property
    def schema_or_none(self) -> dict[str, Any] | None:
        """The JSON Schema the answer must follow, if any."""
        return self.json_schema.schema_ if self.json_schema else None


class CompletionFeatures(Shape):
    """Request fields beyond ``ChatOptions``; only the OpenAI door sets them."""

    tools: list[ToolSpec] | None = Field(None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = Field(None, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=32_768)
    """Sent by this name to openai providers (their reasoning models refuse ``max_tokens``);
    the others take it from ``ChatOptions.max_tokens``, which the door sets to it."""

    @property
    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.wants_json

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


# --- messages and answers ------------------------------------------------------------------


class FunctionCall(Shape):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(description="JSON text of the arguments, as the model wrote it")


class ToolCall(Shape):
    """A complete tool call: in an assistant message of the history, or a whole answer."""

    id: str = Field(min_length=1, max_length=4096)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(Shape):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Shape):
    """A piece of a streamed tool call; the first piece of call ``index`` has id and name."""

    index: int = Field(ge=0)
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class TopLogprob(Shape):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """One generated token's log-probability, with the most likely alternatives."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


def token_bytes(token: str) -> list[int]:
    """The UTF-8 bytes of ``token``, as OpenAI's ``bytes`` field lists them."""
    return list(token.encode())

"""OpenAI Chat Completions request and response shapes (the subset we serve)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MODEL_RULE = """\
`model` selects provider and model: `provider/model` (e.g. `openai/gpt-4o-mini`), a bare
provider name (its default model), or a bare model name (the first provider offering it,
the default provider first)."""


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """Unknown fields are ignored, as OpenAI-compatible servers commonly do."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200, description=MODEL_RULE)
    messages: list[Message] = Field(min_length=1, max_length=500)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32_768)
    stop: str | list[str] | None = None
    user: str | None = Field(None, max_length=256)
    n: int = Field(1, ge=1, le=1, description="Only one choice is supported")
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}

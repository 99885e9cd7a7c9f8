"""A Chat Completions request as a chat input, refused (400 naming the field) when it is
inconsistent or asks for something its provider cannot honour (``capabilities.py``)."""

from __future__ import annotations

from echotune.common.capabilities import Refusal, refusals
from echotune.common.completion import CompletionFeatures, NamedToolChoice
from echotune.common.messages import ChatMessage, ChatOptions, Role
from echotune.common.providers import ProviderRegistry
from echotune.gateway.chat.service import ChatInput
from echotune.gateway.openai_compat.schemas import ChatCompletionRequest, Message
from echotune.gateway.openai_compat.service import resolve_model
from echotune.web.errors import ApiError

ROLES = {"developer": Role.SYSTEM}


def bad_param(param: str, message: str, code: str = "invalid_request") -> ApiError:
    """A 400 whose OpenAI error object names ``param``."""
    details = [{"loc": param.split("."), "msg": message, "type": code}]
    return ApiError(400, code, message, details=details)


MESSAGE_CODES = ("message_too_long", "empty_message")
"""The chat service's refusals of a chat's message: on this door, of the last message."""


def located(error: ApiError, last: int) -> ApiError:
    """``error`` naming the last message's content when it refuses the message itself."""
    if error.code in MESSAGE_CODES and error.details is None:
        return bad_param(f"messages.{last}.content", error.message, error.code)
    return error


def to_chat_input(
    request: ChatCompletionRequest, request_id: str, user_id: str, registry: ProviderRegistry
) -> ChatInput:
    provider, model = resolve_model(registry, request.model)
    messages = [_message(m) for m in request.messages]
    _check_turns(messages)
    _check_paired_fields(request)
    features = features_of(request)
    config = registry.get(provider)
    assert config is not None  # resolve_model found it
    if refused := refusals(config.kind, features, messages, request.temperature):
        raise _unsupported(refused[0], provider)
    options = ChatOptions(
        temperature=request.temperature,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stop=request.stops(),
        use_context=False,
        use_profile=False,  # the client writes its own prompt
    )
    last = messages[-1]
    return ChatInput(
        request_id=request_id,
        user_id=user_id,
        message=last.content,
        provider=provider,
        model=model,
        options=options,
        history=tuple(messages[:-1]),
        features=features,
        final=None if last.role is Role.USER else last,
    )


def _message(message: Message) -> ChatMessage:
    return ChatMessage(
        role=ROLES.get(message.role) or Role(message.role),
        content=message.text,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
    )


def features_of(request: ChatCompletionRequest) -> CompletionFeatures | None:
    """The request's fields beyond plain text generation; ``None`` when none is set."""
    names = CompletionFeatures.model_fields
    features = CompletionFeatures.model_validate(
        {name: getattr(request, name) for name in names}, from_attributes=True
    )
    return None if features.is_empty() else features


def _check_turns(messages: list[ChatMessage]) -> None:
    """The last message is the user's (not empty) or a tool result; every tool call gets its
    result."""
    last = len(messages) - 1
    if messages[-1].role not in (Role.USER, Role.TOOL):
        raise bad_param(f"messages.{last}.role", "the last message must be a user or tool message")
    if messages[-1].role is Role.USER and not messages[-1].content.strip():
        raise bad_param(f"messages.{last}.content", "the message is empty", "empty_message")
    pending: dict[str, int] = {}  # unanswered call id → index of its assistant message
    for index, message in enumerate(messages):
        if message.role is Role.TOOL:
            if pending.pop(message.tool_call_id or "", None) is None:
                raise bad_param(
                    f"messages.{index}.tool_call_id",
                    "a tool message must answer a call of the assistant message before it",
                )
            continue
        _check_answered(pending)
        pending = {call.id: index for call in message.tool_calls or []}
    _check_answered(pending)


def _check_answered(pending: dict[str, int]) -> None:
    if pending:
        call_id, index = next(iter(pending.items()))
        raise bad_param(
            f"messages.{index}.tool_calls",
            f"tool call {call_id!r} has no tool message answering it",
        )


def _check_paired_fields(request: ChatCompletionRequest) -> None:
    if request.tools is None:
        for name in ("tool_choice", "parallel_tool_calls"):
            if getattr(request, name) is not None:
                raise bad_param(name, f"`{name}` is only allowed when `tools` are given")
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        names = {tool.function.name for tool in request.tools or []}
        if choice.function.name not in names:
            raise bad_param("tool_choice", "`tool_choice` names a function that is not in tools")
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_param("top_logprobs", "`top_logprobs` needs `logprobs: true`")
    both = (request.max_tokens, request.max_completion_tokens)
    if None not in both and both[0] != both[1]:
        raise bad_param("max_tokens", "`max_tokens` and `max_completion_tokens` differ: send one")
    if request.stream_options is not None and not request.stream:
        raise bad_param("stream_options", "`stream_options` is only allowed when `stream` is true")


def _unsupported(refusal: Refusal, provider: str) -> ApiError:
    message = f"{refusal.message} (provider `{provider}`): not sent rather than ignored"
    return bad_param(refusal.param, message, "unsupported_parameter")

"""Tool results through the chat service, as the OpenAI door hands them over."""

from __future__ import annotations

from fastapi import FastAPI

from echotune.common.completion import FunctionCall, ToolCall
from echotune.common.messages import ChatMessage, Role
from echotune.gateway.chat.service import ChatInput, ChatService


async def test_a_tool_result_with_no_content_is_a_message(gateway: FastAPI) -> None:
    """A function that returned nothing is a valid OpenAI tool message: it was 400 empty."""
    service: ChatService = gateway.state.chat
    call = ToolCall(id="call_1", function=FunctionCall(name="f", arguments="{}"))
    chat = ChatInput(
        request_id="tool-result-01",
        user_id="anonymous",
        message="",
        history=(
            ChatMessage(role=Role.USER, content="call f"),
            ChatMessage(role=Role.ASSISTANT, content="", tool_calls=[call]),
        ),
        final=ChatMessage(role=Role.TOOL, content="", tool_call_id="call_1"),
    )
    stream = await service.open(chat, None)
    assert stream is not None
    assert stream.first_frame
    service.release(stream)

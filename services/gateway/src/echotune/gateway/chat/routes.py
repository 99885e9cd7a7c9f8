"""HTTP endpoints of the streaming chat."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from echotune.common.messages import (
    REQUEST_ID_PATTERN,
    ChatOptions,
)
from echotune.gateway.chat.schemas import (
    STREAM_ID_PATTERN,
    CancelResponse,
    ChatStreamRequest,
    StreamQuery,
    sse_openapi_response,
)
from echotune.gateway.chat.service import ChatInput
from echotune.gateway.chat.sse import SSEResponse
from echotune.gateway.deps import AUTHENTICATED, ChatServiceDep, UserIdDep
from echotune.web.errors import ApiError
from echotune.web.requestid import requested_id

router = APIRouter(prefix="/api/chat", tags=["chat"], dependencies=AUTHENTICATED)

LastEventIdHeader = Annotated[str | None, Header(alias="Last-Event-ID", pattern=STREAM_ID_PATTERN)]


async def _respond(service: ChatServiceDep, chat: ChatInput, last_event_id: str | None) -> Response:
    stream = await service.open(chat, last_event_id)
    if stream is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return SSEResponse(service.frames(stream), headers={}, on_close=lambda: service.release(stream))


def _chat_input(request: Request, user_id: str, **fields: Any) -> ChatInput:
    """The request's own id, user and address with what the client asked for."""
    ip = request.client.host if request.client else "unknown"
    return ChatInput(request_id=request.state.request_id, user_id=user_id, client_ip=ip, **fields)


@router.get(
    "/stream",
    response_class=SSEResponse,
    responses=sse_openapi_response(),
    summary="Stream an answer (EventSource-friendly)",
)
async def stream_get(
    request: Request,
    service: ChatServiceDep,
    user_id: UserIdDep,
    query: Annotated[StreamQuery, Query()],
    last_event_id_header: LastEventIdHeader = None,
) -> Response:
    """Start a chat answer, or attach to a running one, as Server-Sent Events."""
    if query.message is None and not requested_id(request.scope):  # an empty header names none
        raise ApiError(
            422, "message_required", "give a message, or the request_id of an answer to attach to"
        )
    chat = _chat_input(
        request,
        user_id,
        message=query.message,
        conversation_id=query.conversation_id,
        provider=query.provider,
        model=query.model,
        options=ChatOptions(
            use_context=query.use_context, use_profile=query.use_profile, time_zone=query.time_zone
        ),
    )
    return await _respond(service, chat, last_event_id_header or query.last_event_id)


@router.post(
    "/stream",
    response_class=SSEResponse,
    responses=sse_openapi_response(),
    summary="Stream an answer (JSON body)",
)
async def stream_post(
    request: Request,
    body: ChatStreamRequest,
    service: ChatServiceDep,
    user_id: UserIdDep,
    last_event_id_header: LastEventIdHeader = None,
) -> Response:
    """Start a chat answer described by a JSON body, as Server-Sent Events."""
    chat = _chat_input(
        request,
        user_id,
        message=body.message,
        conversation_id=body.conversation_id,
        provider=body.provider,
        model=body.model,
        options=body.options,
    )
    return await _respond(service, chat, last_event_id_header)


@router.post("/{request_id}/cancel", status_code=202, summary="Stop an answer")
async def cancel(
    request_id: Annotated[str, Path(pattern=REQUEST_ID_PATTERN)],
    service: ChatServiceDep,
    user_id: UserIdDep,
    response: Response,
) -> CancelResponse:
    """Stop the generation: the worker closes its upstream call and the stream ends `cancelled`."""
    state = await service.cancel(request_id, user_id)
    if state == "finished":
        response.status_code = status.HTTP_200_OK
    return CancelResponse(request_id=request_id, status=state)

"""`POST /v1/chat/completions` and `GET /v1/models`, as OpenAI SDKs expect them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from echotune.gateway.auth.keys import ANONYMOUS
from echotune.gateway.chat.relay import Entry
from echotune.gateway.chat.service import ChatService
from echotune.gateway.chat.sse import SSEResponse
from echotune.gateway.deps import AUTHENTICATED, ChatServiceDep, RegistryDep, UserIdDep
from echotune.gateway.openai_compat.request import located, to_chat_input
from echotune.gateway.openai_compat.schemas import MODEL_RULE, ChatCompletionRequest
from echotune.gateway.openai_compat.service import Completion, chunk_stream, resolve_model
from echotune.web.errors import ApiError

router = APIRouter(prefix="/v1", tags=["openai-compatible"], dependencies=AUTHENTICATED)


@router.post(
    "/chat/completions", summary="OpenAI-compatible Chat Completions", description=MODEL_RULE
)
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    chat: ChatServiceDep,
    registry: RegistryDep,
    user_id: UserIdDep,
) -> Response:
    """Streams `chat.completion.chunk`s (`stream: true`) or returns one `chat.completion`.

    Same jobs, workers, breakers, retries and failover as `/api/chat/stream`; closing the
    connection cancels the upstream call. There is no resume on this door.
    """
    request_id: str = request.state.request_id
    user = body.user if user_id == ANONYMOUS and body.user else user_id
    chat_input = to_chat_input(body, request_id, user, registry)
    chat_input = replace(chat_input, client_ip=request.client.host if request.client else "")
    try:
        stream = await chat.open(chat_input, None)
    except ApiError as error:
        raise located(error, len(body.messages) - 1) from None
    if stream is None:  # a request id reused for an identical request that has ended
        raise ApiError(409, "request_id_conflict", "this request has ended; use a new request id")
    completion = Completion(
        id=f"chatcmpl-{request_id}", model=f"{chat_input.provider}/{chat_input.model}"
    )
    entries = chat.entries(stream)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = chunk_stream(completion, entries, include_usage)

        def closed() -> None:
            """A client that leaves early cancels the answer (OpenAI clients never resume),
            and so does a stream ended early because the answer restarted."""
            chat.release(stream)
            if not stream.ended or completion.restarted:
                chat.cancel_soon(request_id, user)

        return SSEResponse(chunks, headers={}, on_close=closed)
    try:
        return await _complete(request, chat, request_id, user, completion, entries)
    finally:
        chat.release(stream)


async def _complete(
    request: Request,
    chat: ChatService,
    request_id: str,
    user: str,
    completion: Completion,
    entries: AsyncIterator[Entry | None],
) -> Response:
    collect = asyncio.create_task(_collect(completion, entries))
    gone = asyncio.create_task(_disconnected(request))
    done, _ = await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    if gone in done:
        collect.cancel()
        await chat.cancel(request_id, user)
        return Response(status_code=499)
    gone.cancel()
    if (failure := collect.exception()) is not None:
        raise ApiError(502, "relay_failed", "the answer could not be relayed") from failure
    if completion.error:
        status, code, message = completion.error
        raise ApiError(status, code, message)
    return JSONResponse(completion.whole())


async def _collect(completion: Completion, entries: AsyncIterator[Entry | None]) -> None:
    async for entry in entries:
        if entry is not None:
            completion.absorb(entry)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/models", summary="Configured models, in OpenAI's list format")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [_model(p.name, m) for p in registry for m in p.models],
    }


@router.get("/models/{name:path}", summary="One model, by any name a chat's `model` takes")
async def get_model(name: str, registry: RegistryDep) -> dict[str, Any]:
    provider, _ = resolve_model(registry, name)
    return {"id": name, "object": "model", "created": 0, "owned_by": provider}


def _model(provider: str, model: str) -> dict[str, Any]:
    return {"id": f"{provider}/{model}", "object": "model", "created": 0, "owned_by": provider}

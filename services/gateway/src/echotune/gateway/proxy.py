"""Analytics pass-through: the gateway is the only public API.

Requests go to the analytics service with the caller's user id imposed on ``user_id``, so a
user only ever reads their own listening data and conversations.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Request, Response

from echotune.gateway.deps import AUTHENTICATED, UserIdDep
from echotune.gateway.errors import ApiError

router = APIRouter(tags=["analytics"], dependencies=AUTHENTICATED)

FORWARDED_HEADERS = ("accept", "x-request-id")


def _client(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.analytics
    return client


AnalyticsDep = Annotated[httpx.AsyncClient, Depends(_client)]


async def forward(request: Request, client: httpx.AsyncClient, user_id: str) -> Response:
    params: list[tuple[str, str | int | float | bool | None]] = [
        (k, v) for k, v in request.query_params.multi_items() if k != "user_id"
    ]
    params.append(("user_id", user_id))
    headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
    headers["x-request-id"] = request.state.request_id
    try:
        upstream = await client.get(request.url.path, params=params, headers=headers)
    except httpx.InvalidURL as exc:  # e.g. control characters: nothing analytics could serve
        raise ApiError(422, "invalid_request", "the path or query is not a valid URL") from exc
    except httpx.TimeoutException as exc:
        raise ApiError(
            504, "analytics_timeout", "the analytics service did not answer in time"
        ) from exc
    except httpx.TransportError as exc:
        raise ApiError(
            503, "analytics_unavailable", "the analytics service is unreachable"
        ) from exc
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "application/json"),
    )


@router.get("/api/analytics/{path:path}", summary="Provider analytics and listening patterns")
async def analytics(request: Request, client: AnalyticsDep, user_id: UserIdDep) -> Response:
    return await forward(request, client, user_id)


@router.get("/api/insights/{path:path}", summary="Engagement insights")
async def insights(request: Request, client: AnalyticsDep, user_id: UserIdDep) -> Response:
    return await forward(request, client, user_id)


@router.get("/api/conversations", summary="The caller's conversations")
async def conversations(request: Request, client: AnalyticsDep, user_id: UserIdDep) -> Response:
    return await forward(request, client, user_id)


@router.get("/api/conversations/{conversation_id}", summary="One of the caller's conversations")
async def conversation(request: Request, client: AnalyticsDep, user_id: UserIdDep) -> Response:
    return await forward(request, client, user_id)

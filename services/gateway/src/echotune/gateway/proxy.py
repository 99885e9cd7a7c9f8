"""Analytics pass-through: the gateway is the only public API.

Requests go to the analytics service with the caller's user id imposed on ``user_id``, so a
user only ever reads their own listening data and conversations. Only the routes of
:data:`ROUTES` are forwarded, and only when the path is sent exactly as listed: a dot segment,
an encoded character (``%2e``, ``%2f``, double encoding…) or a backslash is a 404.
"""

from __future__ import annotations

import re
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Request, Response

from echotune.common.messages import CONVERSATION_ID, CONVERSATION_ID_RULE
from echotune.gateway.deps import AUTHENTICATED, UserIdDep
from echotune.web.errors import ApiError

router = APIRouter(tags=["analytics"], dependencies=AUTHENTICATED)

FORWARDED_HEADERS = ("accept", "x-request-id")
RETURNED_HEADERS = ("retry-after",)
ROUTES = (
    "/api/analytics/providers",
    "/api/analytics/providers/timeseries",
    "/api/analytics/listening-patterns",
    "/api/insights/engagement",
    "/api/conversations",
    f"/api/conversations/{CONVERSATION_ID}",  # no dot segment, separator or % can match
)
"""The analytics routes the gateway forwards (regular expressions of raw paths)."""
_KNOWN = re.compile("|".join(f"(?:{route})" for route in ROUTES))
_CONVERSATION = re.compile(r"/api/conversations/(?!\.\.?$)[^/\\%]+")
"""A path naming one conversation, known route or not; a dot segment, a backslash or an
encoded character names none (a traversal: a 404)."""


def _client(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.analytics
    return client


AnalyticsDep = Annotated[httpx.AsyncClient, Depends(_client)]


def upstream_path(request: Request) -> str:
    """The path to forward: the request's, as sent, when it names a known route; else 404."""
    raw: bytes | None = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw is not None else request.url.path
    if path != request.url.path:  # an encoded character: never forwarded
        raise ApiError(404, "not_found", "no such analytics route")
    if _KNOWN.fullmatch(path):
        return path
    if _CONVERSATION.fullmatch(path):
        raise _bad_conversation_id()
    raise ApiError(404, "not_found", "no such analytics route")


def _bad_conversation_id() -> ApiError:
    rule, kind = CONVERSATION_ID_RULE, "string_pattern_mismatch"
    details = [{"loc": ["path", "conversation_id"], "msg": rule, "type": kind}]
    return ApiError(422, "invalid_request", f"conversation_id: {rule}", details=details)


async def forward(request: Request, client: httpx.AsyncClient, user_id: str) -> Response:
    params: list[tuple[str, str | int | float | bool | None]] = [
        (k, v) for k, v in request.query_params.multi_items() if k != "user_id"
    ]
    params.append(("user_id", user_id))
    path = upstream_path(request)
    headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
    headers["x-request-id"] = request.state.request_id
    try:
        upstream = await client.get(path, params=params, headers=headers)
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
        headers={k: v for k, v in upstream.headers.items() if k in RETURNED_HEADERS},
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

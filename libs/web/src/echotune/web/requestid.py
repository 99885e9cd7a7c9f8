"""X-Request-Id: taken from the header or ``request_id`` query parameter, else generated."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echotune.common.error_body import error_body
from echotune.common.logs import request_id_var
from echotune.common.messages import REQUEST_ID_PATTERN, new_request_id

HEADER = "X-Request-Id"
QUERY = "request_id"
"""The request id as a query parameter (``EventSource`` cannot set a header)."""
_VALID = re.compile(REQUEST_ID_PATTERN)


def requested_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return str(value.decode("latin-1"))
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get(QUERY)
    return values[-1] if values else None


class RequestIdMiddleware:
    """Puts the request id in ``scope["state"]``, the logging context and the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = requested_id(scope) or new_request_id()
        if not _VALID.fullmatch(request_id):
            await _reject(send, request_id)
            return
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


async def _reject(send: Send, value: str) -> None:
    message = f"request id must match {REQUEST_ID_PATTERN}"
    # the request has no id here: its own was refused (error_body says null)
    body = json.dumps(error_body("invalid_request_id", message, {"value": value[:100]})).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 422, "headers": headers})
    await send({"type": "http.response.body", "body": body})

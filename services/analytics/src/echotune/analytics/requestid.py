"""X-Request-Id: taken from the header when it is valid, else generated; echoed back."""

from __future__ import annotations

import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echotune.common.logs import request_id_var
from echotune.common.messages import REQUEST_ID_PATTERN, new_request_id

HEADER = "X-Request-Id"
_VALID = re.compile(REQUEST_ID_PATTERN)


def requested_id(scope: Scope) -> str | None:
    """The caller's request id if it sent a valid one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID.match(candidate) else None
    return None


class RequestIdMiddleware:
    """Puts the request id in the logging context and the response headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = requested_id(scope) or new_request_id()
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

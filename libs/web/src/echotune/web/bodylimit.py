"""Request body size limit.

Why not Starlette's ``RequestBodyLimitMiddleware``: it answers 413 in plain text, and every
error of this API is JSON.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised as the body is read: an HTTP error, so FastAPI's body reading passes it on (it
    turns any other error into a 400) and the app's error handlers answer it, request id and
    the door's error format included."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the body exceeds {max_bytes} bytes")


class BodySizeLimitMiddleware:
    """Refuses (413) a request body larger than ``max_bytes``, declared or streamed, as soon as
    the app reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        seen = int(declared) if declared.isdigit() and int(declared) > self.max_bytes else 0

        async def counting_receive() -> Message:
            nonlocal seen
            if seen > self.max_bytes:  # declared too large: nothing of it is read
                raise BodyTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        # ``send`` is not wrapped: every frame of a stream would pay for it, and a body is read
        # in full before any answer to it starts.
        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:  # an app without the handlers (they answer it otherwise)
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        error = {"code": "body_too_large", "message": f"the body exceeds {self.max_bytes} bytes"}
        body = json.dumps({"error": error}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

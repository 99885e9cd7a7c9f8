"""Request body size limit.

Why not Starlette's ``RequestBodyLimitMiddleware``: it answers 413 in plain text, and every
error of this API is JSON, in the shape of the door it came through.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echotune.web.errors import ApiError, Render, render_error

CODE = "body_too_large"


class BodyTooLarge(HTTPException):
    """Raised as a streamed body grows too large: an HTTP error, so FastAPI's body reading
    passes it on (it turns any other error into a 400) and the app's handlers answer it."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the body exceeds {max_bytes} bytes")


class BodySizeLimitMiddleware:
    """Refuses (413) a request body larger than ``max_bytes``: declared, before the app runs;
    streamed, as it is read. ``render`` answers as the app's error handlers do."""

    def __init__(self, app: ASGIApp, max_bytes: int, render: Render = render_error) -> None:
        self.app, self.max_bytes, self.render = app, max_bytes, render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)  # even where the body is never read
            return
        seen, refused = 0, False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:  # e.g. a disconnect listener: the request is over
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        # ``send`` is not wrapped: every frame of a stream would pay for it, and a body is read
        # in full before any answer to it starts.
        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:  # raised where no handler answers it (a middleware read it)
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(413, CODE, BodyTooLarge(self.max_bytes).detail)
        await self.render(Request(scope, receive), error)(scope, receive, send)

"""The shape every echotune FastAPI service shares: logging, error body, request ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from echotune.common.logs import configure_logging
from echotune.common.settings import ServiceSettings
from echotune.web.errors import Render, install_error_handlers, render_error
from echotune.web.requestid import RequestIdMiddleware

VERSION = "0.1.0"
Middleware = tuple[Any, dict[str, Any]]
"""A middleware class and its options."""


RAW_SEND = "echotune.raw_send"
"""Scope key of the server's own ``send``, under every middleware's wrapper of it."""


class ServiceApp(FastAPI):
    """FastAPI that leaves the server's ``send`` in the scope: a stream's body frames may go
    straight to it (the middlewares only act on the response start and its end)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def service_app(
    name: str,
    settings: ServiceSettings,
    *,
    title: str,
    description: str,
    lifespan: Any,
    render: Render = render_error,
    middleware: Sequence[Middleware] = (),
) -> FastAPI:
    """A FastAPI app with the service's logging, settings in its state, the JSON error body,
    ``middleware`` (innermost first) and, outermost, the request id of every answer."""
    configure_logging(name, settings.log_level, settings.log_format)
    app = ServiceApp(title=title, version=VERSION, description=description, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app, render)
    for cls, options in middleware:
        app.add_middleware(cls, **options)
    app.add_middleware(RequestIdMiddleware)
    return app

"""The shape every echotune FastAPI service shares: logging, error body, request ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from echotune.common.logs import configure_logging
from echotune.common.settings import ServiceSettings
from echotune.web.errors import Render, install_error_handlers, render_error
from echotune.web.requestid import RequestIdMiddleware

VERSION = "0.1.0"
Middleware = tuple[Any, dict[str, Any]]
"""A middleware class and its options."""


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
    app = FastAPI(title=title, version=VERSION, description=description, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app, render)
    for cls, options in middleware:
        app.add_middleware(cls, **options)
    app.add_middleware(RequestIdMiddleware)
    return app

"""Analytics' own errors: a bad parameter, and MongoDB failures as clear JSON answers."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError

from echotune.web.errors import ApiError, error_response

log = logging.getLogger(__name__)


def bad_parameter(param: str, code: str, message: str, value: Any = None) -> ApiError:
    """A 422 about one query parameter, naming it and the refused value."""
    return ApiError(422, code, message, details={"param": param, "value": value})


def mongo_unavailable(exc: Exception) -> JSONResponse:
    """503 for a MongoDB that cannot be reached (never a fallback to made-up data)."""
    message = "MongoDB is not reachable; no analytics can be computed right now"
    return error_response(
        503,
        "mongodb_unavailable",
        message,
        {"reason": str(exc)[:500]},
        headers={"Retry-After": "5"},
    )


def install_mongo_handlers(app: FastAPI) -> None:
    """MongoDB's failures as the shared error body (the others are the web kit's)."""

    @app.exception_handler(ConnectionFailure)
    async def _unreachable(_: Request, exc: ConnectionFailure) -> JSONResponse:
        log.warning("MongoDB unreachable: %s", exc)
        return mongo_unavailable(exc)

    @app.exception_handler(ExecutionTimeout)
    async def _timeout(_: Request, exc: ExecutionTimeout) -> JSONResponse:
        message = "the query took longer than its time limit; narrow the range or filters"
        return error_response(504, "query_timeout", message)

    @app.exception_handler(PyMongoError)
    async def _database(_: Request, exc: PyMongoError) -> JSONResponse:
        log.exception("MongoDB error", exc_info=exc)
        return error_response(500, "database_error", "MongoDB refused the query", str(exc)[:500])

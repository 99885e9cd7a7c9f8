"""One JSON error body for every 4xx/5xx: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from echotune.common.logs import request_id_var


class ApiError(Exception):
    """An error answered to the client as is."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers


OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _openai_error(
    status: int, code: str, message: str, details: Any, headers: dict[str, str] | None
) -> JSONResponse:
    """OpenAI's error object, for the ``/v1`` door; validation errors are 400 there."""
    param = None
    if isinstance(details, list) and details and details[0].get("loc"):
        param = ".".join(str(part) for part in details[0]["loc"] if part != "body") or None
    status = 400 if status == 422 else status
    body = {
        "message": message,
        "type": OPENAI_ERROR_TYPES.get(status, "api_error"),
        "param": param,
        "code": code,
    }
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
) -> JSONResponse:
    if request is not None and request.url.path.startswith("/v1/"):
        return _openai_error(status, code, message, jsonable_encoder(details), headers)
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = jsonable_encoder(details)
    return JSONResponse(
        {"error": body, "request_id": request_id_var.get()}, status_code=status, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.code, exc.message, exc.details, exc.headers, request=request
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        message = "request validation failed"
        if details:
            message = f"{message}: {details[0]['msg']} at {'.'.join(map(str, details[0]['loc']))}"
        return error_response(422, "invalid_request", message, details, request=request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(
            exc.status_code,
            code,
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
            request=request,
        )

"""The JSON error body every echotune HTTP port answers with: ``{"error": {...}, "request_id"}``."""

from __future__ import annotations

from typing import Any

from echotune.common.logs import request_id_var


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """``details`` must be JSON-ready (``None``: left out)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    request_id = request_id_var.get()
    return {"error": error, "request_id": None if request_id == "-" else request_id}

"""Schemathesis checks loaded through ``SCHEMATHESIS_HOOKS``: every 4xx answers JSON."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def json_error_body(ctx: Any, response: Any, case: Any) -> None:
    """A 4xx response has a JSON body that says what went wrong."""
    if not 400 <= response.status_code < 500:
        return
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), f"4xx with {content_type!r}"
    body = response.json()
    assert isinstance(body, dict), "4xx body is not a JSON object"
    assert "error" in body, "4xx body has no `error`"

"""Log lines: text with the request id, or one JSON object per line with request and trace ids."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from echotune.common import tracing
from echotune.common.logs import configure_logging, request_id_var


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_json_lines_carry_the_request_and_trace_ids(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_tracer", TracerProvider().get_tracer("test"))
    configure_logging("gateway", "INFO", "json")
    token = request_id_var.set("req-0001-abcdef")
    try:
        with tracing.span("POST /api/chat/stream"):
            ids = tracing.trace_ids()
            logging.getLogger("echotune.test").info("queued %s", "job\nwith a newline")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("echotune.test").exception("failed")
    finally:
        request_id_var.reset(token)
    logging.getLogger("echotune.test").warning("outside")
    lines = capsys.readouterr().err.splitlines()
    first, failed, outside = (json.loads(line) for line in lines)
    assert ids is not None
    assert first["message"] == "queued job\nwith a newline"
    assert (first["request_id"], first["trace_id"], first["span_id"]) == ("req-0001-abcdef", *ids)
    assert (first["service"], first["level"], first["logger"]) == (
        "gateway",
        "INFO",
        "echotune.test",
    )
    assert failed["trace_id"] is None
    assert "ValueError: boom" in failed["exception"]
    assert (outside["request_id"], outside["trace_id"]) == (None, None)


def test_text_lines_keep_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("llm-worker", "INFO")
    token = request_id_var.set("req-0002-abcdef")
    try:
        logging.getLogger("echotune.test").info("hello")
    finally:
        request_id_var.reset(token)
    line = capsys.readouterr().err.strip()
    assert line.endswith("INFO llm-worker echotune.test [rid=req-0002-abcdef] hello")

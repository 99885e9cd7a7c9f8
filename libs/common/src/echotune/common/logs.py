"""Logging with the current request id (and trace id, when tracing is on) on every line.

``text`` (default): one line per record, ``[rid=<request id>]`` in it. ``json``
(``ECHOTUNE_LOG_FORMAT=json``): one JSON object per line with ``ts``, ``level``,
``service``, ``logger``, ``message``, ``request_id``, ``trace_id``, ``span_id`` (``null``
outside a traced request) and ``exception`` when there is one.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

from echotune.common import tracing

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

LogFormat = Literal["text", "json"]
FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s [rid=%(request_id)s] %(message)s"


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.service = self.service
        ids = tracing.trace_ids()
        record.trace_id, record.span_id = ids if ids else (None, None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "-")
        body: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", None),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id == "-" else request_id,
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exception"] = record.exc_text
        return json.dumps(body, ensure_ascii=False, default=str)


def configure_logging(service: str, level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Send every record of this process to stderr with service name and request id."""
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream"):
        logger = logging.getLogger(name)
        # `uvicorn --no-access-log` leaves "uvicorn.access" with no handler and no propagation
        disabled = name == "uvicorn.access" and not logger.handlers and not logger.propagate
        logger.handlers[:] = []
        logger.propagate = not disabled
    _defer_uvicorn_config()


def _defer_uvicorn_config() -> None:
    """``faststream run`` builds uvicorn's Config (which applies uvicorn's logging config)
    after the app factory has run: make that config leave uvicorn's records to the root
    handler, so that every line of the process has one format."""
    try:
        from uvicorn.config import LOGGING_CONFIG
    except ImportError:  # a service without uvicorn
        return
    for logger in LOGGING_CONFIG.get("loggers", {}).values():
        logger["handlers"] = []
        logger["propagate"] = True

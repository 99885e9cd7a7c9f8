"""Logging with the current request id on every line."""

from __future__ import annotations

import logging
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s [rid=%(request_id)s] %(message)s"


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.service = self.service
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every record of this process to stderr with service name and request id."""
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream"):
        logger = logging.getLogger(name)
        # `uvicorn --no-access-log` leaves "uvicorn.access" with no handler and no propagation
        disabled = name == "uvicorn.access" and not logger.handlers and not logger.propagate
        logger.handlers[:] = []
        logger.propagate = not disabled

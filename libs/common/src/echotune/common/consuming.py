"""Keeping FastStream stream subscribers consuming: restarted after a lost group, health,
and handler context injected without a thread hop.

FastStream stops a group's subscriber for good when the group vanishes (``NOGROUP``: Redis
lost its data, or the stream was deleted) and asks for a restart of the process; the worker
and telemetry services restart the subscriber instead and report it down meanwhile."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, Self

from faststream._internal.context import Context as ContextField
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.handlers import GetHandler
from faststream.asgi.response import JSONResponse
from faststream.redis import RedisBroker, StreamSub

from echotune.common.error_body import error_body
from echotune.common.redis import PROBE_TIMEOUT_S


class InlineContext(ContextField):
    """``Context`` resolved on the event loop: FastStream's own resolves every ``Context``
    parameter in a worker thread (a synchronous ``use`` under fast_depends), two thread hops
    per message for a handler with two."""

    async def use(self, /, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return super().use(**kwargs)


class StreamSubscription(StreamSub):
    """``StreamSub`` that is not copied per message: FastStream adds the broker's prefix to its
    subscription with a ``deepcopy`` each time it reads a field of it (on every read, twice
    more per message); without a prefix the subscription is itself."""

    __slots__ = ()

    def add_prefix(self, prefix: str) -> Self:
        return self if not prefix else super().add_prefix(prefix)


class Subscriber(Protocol):
    """What of a FastStream subscriber is used here."""

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def restart_stopped(
    subscribers: Sequence[Subscriber], recreate_group: Callable[[], Awaitable[object]]
) -> int:
    """Recreate the group and start again every subscriber FastStream stopped; how many."""
    stopped = [subscriber for subscriber in subscribers if not subscriber.running]
    if stopped:
        await recreate_group()
        for subscriber in stopped:
            await subscriber.start()
    return len(stopped)


class ProbePort(AsgiFastStream):
    """A FastStream service whose HTTP port (probes, metrics) answers an unknown path with
    the JSON error body, not FastStream's "doesn't support regular HTTP" text."""

    async def not_found(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().not_found(scope, receive, send)
            return
        served = ", ".join(path for path, _ in self.routes)
        body = error_body("not_found", f"this port serves {served} only")
        await JSONResponse(body, 404)(scope, receive, send)


def health_route(broker: RedisBroker, subscribers: Sequence[Subscriber]) -> GetHandler:
    """``/healthz``: 204 while Redis answers and every subscriber reads; 503 otherwise."""

    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:
        try:
            alive = await broker.ping(timeout=PROBE_TIMEOUT_S) and all(
                s.running for s in subscribers
            )
        except Exception:
            alive = False
        return AsgiResponse(b"", status_code=204 if alive else 503)

    return healthz

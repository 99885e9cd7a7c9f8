"""Subscribers stopped by a lost group are started again, after the group is made again."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
import faststream.redis.schemas.stream_sub
import httpx
import pytest
from faststream import Context
from faststream.redis import RedisBroker, StreamSub, TestRedisBroker
from faststream.redis.message import RedisMessage

from echotune.common.consuming import (
    InlineContext,
    ProbePort,
    StreamSubscription,
    health_route,
    restart_stopped,
)


class FakeSubscriber:
    def __init__(self, running: bool, log: list[str], name: str) -> None:
        self.running, self.log, self.name = running, log, name

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        self.running = True

    async def stop(self) -> None:
        self.running = False


async def test_only_stopped_subscribers_restart_after_the_group_is_recreated() -> None:
    log: list[str] = []
    subscribers = [FakeSubscriber(True, log, "new"), FakeSubscriber(False, log, "reclaim")]

    async def recreate() -> None:
        log.append("group")

    assert await restart_stopped(subscribers, recreate) == 1
    assert log == ["group", "start reclaim"]
    assert await restart_stopped(subscribers, recreate) == 0
    assert log == ["group", "start reclaim"]


@pytest.mark.parametrize(("field", "hops"), [(Context, 2), (InlineContext, 0)])
async def test_inline_context_is_resolved_without_a_thread_hop(
    field: Any, hops: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastStream's ``Context`` resolves each parameter in a worker thread, per message."""
    calls: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    broker = RedisBroker()
    seen: list[tuple[str, str]] = []

    @broker.subscriber("jobs")
    async def handle(
        body: str,
        service: Annotated[str, field("service")],
        message: Annotated[RedisMessage, field("message")],
    ) -> None:
        seen.append((body, service))

    async with TestRedisBroker(broker) as test_broker:
        test_broker.context.set_global("service", "worker")
        await test_broker.publish("hello", channel="jobs")
    assert seen == [("hello", "worker")]
    assert len(calls) == hops


@pytest.mark.parametrize(("stream_sub", "copied"), [(StreamSub, True), (StreamSubscription, False)])
async def test_a_stream_subscription_is_not_copied_per_message(
    stream_sub: Any, copied: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastStream adds the broker's prefix with a ``deepcopy`` each time it reads a field."""
    broker = RedisBroker()
    seen: list[str] = []

    @broker.subscriber(stream=stream_sub("jobs", group="workers", consumer="w1"))
    async def handle(body: str) -> None:
        seen.append(body)

    async with TestRedisBroker(broker) as test_broker:
        copies: list[object] = []
        deepcopy = faststream.redis.schemas.stream_sub.deepcopy

        def counting(value: Any, *args: Any) -> Any:
            copies.append(value)
            return deepcopy(value, *args)

        monkeypatch.setattr(faststream.redis.schemas.stream_sub, "deepcopy", counting)
        for body in ("one", "two", "three"):
            await test_broker.publish(body, stream="jobs")
    assert seen == ["one", "two", "three"]
    assert bool(copies) is copied


def test_a_stream_subscription_with_a_prefix_is_a_prefixed_copy() -> None:
    subscription = StreamSubscription("jobs", group="workers", consumer="w1")
    assert subscription.add_prefix("") is subscription
    prefixed = subscription.add_prefix("tenant:")
    assert (prefixed.name, prefixed.group, subscription.name) == ("tenant:jobs", "workers", "jobs")


async def test_a_probe_port_answers_an_unknown_path_with_the_json_error_body() -> None:
    """The worker's and telemetry's ports said "Application doesn't support regular HTTP
    protocol." as text (operator review)."""
    app = ProbePort(RedisBroker(), asgi_routes=[("/healthz", health_route(RedisBroker(), []))])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        response = await client.get("/readyz")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == {"code": "not_found", "message": "this port serves /healthz only"}
    assert body["request_id"] is None

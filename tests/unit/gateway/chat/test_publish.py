"""A job queued by the open script is the entry FastStream's own publish would have written.

(The e2e tests prove a worker's subscriber consumes it; a subscriber started here would
leave a stray XREAD behind after its broker stopped, which misleads the relay tests.)
"""

from __future__ import annotations

import time

import pytest
from faststream.redis import RedisClusterBroker

from echotune.common.messages import ChatJob, ChatMessage, Role
from echotune.common.redis import create_broker
from echotune.common.stream_entry import entry_fields
from echotune.gateway.chat.publish import job_fields


async def test_a_job_entry_is_faststreams_message_for_the_job(redis_server_url: str) -> None:
    job = ChatJob(
        request_id="contract-0001",
        messages=[ChatMessage(role=Role.USER, content="héllo")],
        provider="demo",
        model="m",
        deadline_at=time.time() + 60,
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    )
    broker = create_broker(redis_server_url)  # as the gateway's: connected
    await broker.connect()
    try:
        name, data = await job_fields(broker, job)
    finally:
        await broker.stop()
    assert name == "__data__"
    assert isinstance(data, bytes)
    body, headers = broker.message_format.parse(data)
    assert headers["content-type"] == "application/json"
    assert ChatJob.model_validate_json(body) == job


async def test_a_cluster_broker_is_refused_it_would_publish_past_the_capture() -> None:
    """FastStream's cluster broker ignores a pipeline: the capture would miss the entry and a
    real one would be written to a stream named ``-``."""
    with pytest.raises(TypeError, match="cluster broker"):
        await entry_fields(RedisClusterBroker("redis://127.0.0.1:1"), {"a": 1})

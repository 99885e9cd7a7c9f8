"""Several worker processes share the jobs of one consumer group."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from echotune.fake_llm import FakeUpstream
from tests.support.sse import read_stream
from tests.support.stack import start_stack


async def test_two_workers_both_take_jobs(
    redis_server_url: str, fake_llm: str, client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    stack = await start_stack(
        redis_server_url, fake_llm, workers=2, ECHOTUNE_WORKER_CONCURRENCY="1"
    )
    try:
        rids = [f"share-{uuid.uuid4().hex}" for _ in range(4)]
        for rid in rids:
            await upstream.script(rid, {"tokens": ["a", "b"], "ttft_ms": 400})
        results = await asyncio.gather(
            *(
                read_stream(
                    client,
                    "GET",
                    f"{stack.url}/api/chat/stream",
                    params={"message": "hi", "request_id": rid},
                )
                for rid in rids
            )
        )
        assert all(r.text == "ab" for r in results)
        for worker in stack.workers:
            taken = [rid for rid in rids if f"[rid={rid}] job taken" in worker.output()]
            assert taken, f"{worker.name} took no job"
    finally:
        await stack.stop()

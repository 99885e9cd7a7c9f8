"""Issue 16: one half-open probe across three workers, even when the probe's answer streams
for longer than its lease (the lease is renewed while the probe runs)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from echotune.fake_llm import FakeUpstream
from tests.support.sse import StreamResult, read_stream
from tests.support.stack import openai_provider, start_stack

LEASE_S = 1.0  # ECHOTUNE_BREAKER_PROBE_TIMEOUT_S
COOLDOWN_S = 1.0  # ECHOTUNE_BREAKER_COOLDOWN_S

# the probe's 1 s lease must be renewed on time: a machine shared with other tests starves it
pytestmark = pytest.mark.serial
PROBE_TOKENS, PROBE_PACE_MS = 12, 300  # the probe streams for ~3.6 s: over 3 leases
WAVES, PER_WAVE, WAVE_GAP_S = 8, 3, 0.4


async def test_one_probe_across_three_workers_while_it_streams_past_its_lease(
    redis_server_url: str, fake_llm: str, client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    stack = await start_stack(
        redis_server_url,
        fake_llm,
        workers=3,
        providers=[openai_provider(fake_llm, "probed"), openai_provider(fake_llm, "spare")],
        ECHOTUNE_DEFAULT_PROVIDER="probed",
        ECHOTUNE_FALLBACKS=json.dumps(["spare"]),
        ECHOTUNE_BREAKER_CONSECUTIVE_FAILURES="3",
        ECHOTUNE_BREAKER_COOLDOWN_S=str(COOLDOWN_S),
        ECHOTUNE_BREAKER_PROBE_TIMEOUT_S=str(LEASE_S),
        ECHOTUNE_WORKER_RETRY_BASE_S="0.05",
        ECHOTUNE_WORKER_RETRY_CAP_S="0.1",
    )

    async def chat(rid: str) -> StreamResult:
        return await read_stream(
            client,
            "POST",
            f"{stack.url}/api/chat/stream",
            json={"message": "play something", "provider": "probed"},
            headers={"X-Request-Id": rid},
        )

    async def breaker() -> dict[str, Any]:
        report = (await client.get(f"{stack.url}/api/providers/health")).json()
        probed = next(p for p in report["providers"] if p["id"] == "probed")
        return dict(probed["breaker"])

    try:
        opener = f"open-{uuid.uuid4().hex}"
        await upstream.script(opener, *[{"status": 500}] * 3, {"tokens": ["spared"]})
        assert (await chat(opener)).text == "spared"
        state = await breaker()
        # a slow run may read it after the 1 s cool-down: then it reports half-open already
        assert state["state"] in ("open", "half_open"), state
        assert state["trips"] == 1, state
        await asyncio.sleep(max(state["opened_at"] + COOLDOWN_S - time.time(), 0) + 0.1)

        slow = {"tokens": [f"p{i} " for i in range(PROBE_TOKENS)], "pace_ms": PROBE_PACE_MS}
        probe_rid = f"probe-{uuid.uuid4().hex}"
        await upstream.script(probe_rid, slow)
        probe_task = asyncio.create_task(chat(probe_rid))
        (started,) = await upstream.requests(probe_rid, until="started")
        assert started["json"]["model"] == "probed-model", "the first call after the cool-down"

        others: list[str] = []
        tasks = []
        for _ in range(WAVES):  # keep asking while the probe streams, past its lease
            for _ in range(PER_WAVE):
                rid = f"wave-{uuid.uuid4().hex}"
                await upstream.script(rid, {"tokens": ["spare answer"]})
                others.append(rid)
                tasks.append(asyncio.create_task(chat(rid)))
            await asyncio.sleep(WAVE_GAP_S)
        results = await asyncio.gather(*tasks)
        probe_result = await probe_task
        (probe_call,) = await upstream.requests(probe_rid)
        calls = [r for rid in others for r in await upstream.requests(rid)]
        probe_calls = 1 + sum(r["json"]["model"] == "probed-model" for r in calls)
        streamed_s = (probe_call["ended_ns"] - probe_call["started_ns"]) / 1e9
        rids = [probe_rid, *others]
        workers = [w for w in stack.workers if any(f"[rid={r}]" in w.output() for r in rids)]
        reasons = [r.of("failover")[0].json["reason"] for r in results if r.of("failover")]
        print(
            f"\nhalf-open: {probe_calls} probe(s) across {len(workers)} workers; the probe "
            f"streamed {streamed_s:.2f} s with a {LEASE_S:.1f} s lease; {len(others)} other "
            f"requests during it: {reasons.count('probe_in_flight')} refused (probe_in_flight)"
        )
        assert streamed_s > 3 * LEASE_S
        assert probe_calls == 1
        assert len(workers) == 3, "all three workers took part"
        assert reasons == ["probe_in_flight"] * len(others)
        assert probe_result.text == "".join(slow["tokens"])
        assert (await breaker())["state"] == "closed", "the probe's success closed it"
    finally:
        await stack.stop()

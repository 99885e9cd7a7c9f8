"""Injects the plan's faults into the running stack, one after the other, and records them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from deploy.chaos.history import FaultRecord, now_ns
from deploy.chaos.plan import PROVIDERS, FaultPlan, Plan, model_of
from deploy.chaos.stack import ChaosStack
from echotune.fake_llm import FakeUpstream

log = logging.getLogger("chaos")
RESTART_TRIES = 3


class FaultInjector:
    def __init__(self, stack: ChaosStack, upstream: FakeUpstream) -> None:
        self.stack, self.upstream = stack, upstream
        self.records: list[FaultRecord] = []

    async def run(self, plan: Plan, t0_ns: int, until_ns: int) -> None:
        """Inject each fault at its time (or once the previous one is over) until ``until_ns``."""
        for fault in plan.faults:
            delay = (t0_ns + fault.at_s * 1e9 - now_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            if now_ns() >= until_ns:
                return
            await self._inject(fault)

    async def _inject(self, fault: FaultPlan) -> None:
        record = FaultRecord(fault.index, fault.kind, "", now_ns())
        self.records.append(record)
        log.info("fault %d: %s", fault.index, fault.kind)
        stack = self.stack
        if fault.kind in ("worker_kill", "worker_term"):
            slot = await stack.busiest_worker(fault.target % len(stack.workers))
            if fault.kind == "worker_kill":
                record.target = await stack.kill_worker(slot)
            else:
                record.target = await stack.term_worker(slot)
                record.note = f"exited after {(now_ns() - record.t_ns) / 1e9:.1f} s"
            await asyncio.sleep(fault.down_s if fault.kind == "worker_kill" else 0.2)
            await self._restart(record, lambda: stack.start_worker(slot))
        elif fault.kind == "gateway_kill":
            index = fault.target % len(stack.gateways)
            record.target = await stack.kill_gateway(index)
            await asyncio.sleep(fault.down_s)
            await self._restart(record, lambda: stack.start_gateway(index))
        elif fault.kind in ("redis_restart", "redis_kill"):
            record.target = "redis"
            graceful = fault.kind == "redis_restart"
            await self._restart(record, lambda: stack.restart_redis(graceful=graceful))
        elif fault.kind == "redis_failover":
            record.target = "redis"
            what, took_s = await stack.fail_over_redis(fault.target)
            record.note = f"{what} {took_s:.1f} s"
            record.t_up_ns = now_ns()
        elif fault.kind == "mongo_restart":
            record.target = "mongodb"
            await stack.stop_mongo()
            await asyncio.sleep(fault.down_s)
            await self._restart(record, stack.start_mongo)
        elif fault.kind == "breaker_trip":
            provider = PROVIDERS[fault.target % len(PROVIDERS)][0]
            record.target = provider
            await self.upstream.outage(model_of(provider), fault.down_s)
            record.t_up_ns = record.t_ns + int(fault.down_s * 1e9)
            record.note = f"503 for every request to {model_of(provider)} for {fault.down_s:.1f} s"
            await asyncio.sleep(fault.down_s)
        else:
            raise ValueError(f"unknown fault {fault.kind}")

    async def _restart(self, record: FaultRecord, start: Callable[[], Awaitable[None]]) -> None:
        for attempt in range(1, RESTART_TRIES + 1):
            try:
                await start()
            except Exception as exc:
                record.note += f" restart {attempt} failed: {exc!s:.200}"
                log.warning("restart after fault %d failed: %s", record.index, exc)
                continue
            record.t_up_ns = now_ns()
            return
        raise RuntimeError(f"could not restart after fault {record.index} ({record.kind})")

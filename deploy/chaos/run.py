"""Runs a chaos run end to end: plan, stack, traffic and faults, drain, collection, checks.

``python -m deploy.chaos [--seed N] [--duration S] [--out DIR] [--ttl-wait full|skip]
[--redis-cluster] [--faults KIND,…]``, or ``--recheck DIR`` to check a recorded ``history.json``
again. Exit status: 0 without a
violation, 1 with violations, 2 when the run itself could not be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import httpx
from redis.asyncio import Redis

from deploy.chaos import collect
from deploy.chaos.accounting import check_redis, check_telemetry
from deploy.chaos.cancels import CancelChecks
from deploy.chaos.checks import RequestChecks
from deploy.chaos.client import Traffic
from deploy.chaos.evidence import Evidence
from deploy.chaos.faults import FaultInjector
from deploy.chaos.findings import Findings
from deploy.chaos.history import History, now_ns
from deploy.chaos.plan import CLUSTER_FAULT_KINDS, FAULT_KINDS, make_plan
from deploy.chaos.report import render, summary
from deploy.chaos.stack import NAMESPACE, ChaosStack, tuning
from deploy.local.processes import ROOT
from echotune.common.keys import Keys
from echotune.common.redis import create_redis
from echotune.fake_llm import FakeUpstream

RESULTS = ROOT / "chaos" / "results"
TTL_WAIT_S = 150.0  # longest designed TTL of a per-request key: MAX_STREAM_S + window + grace
log = logging.getLogger("chaos")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=1.2, help="chat starts per second")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--ttl-wait", choices=("full", "skip"), default="full", help="wait for the TTLs"
    )
    parser.add_argument("--recheck", type=Path, default=None, help="check a recorded run")
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="a local Redis Cluster (3 primaries, 3 replicas); Redis faults are failovers",
    )
    parser.add_argument(
        "--faults", default=None, help="only these fault kinds (comma-separated); default: all"
    )
    return parser.parse_args(argv)


def fault_kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """The fault kinds of the run: every kind of its Redis mode, or those ``--faults`` names."""
    every = CLUSTER_FAULT_KINDS if args.redis_cluster else FAULT_KINDS
    if args.faults is None:
        return every
    chosen = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    if unknown := [k for k in chosen if k not in every]:
        raise SystemExit(f"unknown fault kinds {unknown}; choose among {', '.join(every)}")
    return chosen


def check(history: History) -> tuple[Evidence, Findings]:
    evidence, findings = Evidence.of(history), Findings()
    if history.upstream and not any(evidence.runners(rid) for rid in history.upstream):
        findings.add(
            "harness",
            None,
            "no worker log line names a job taken: the worker's log messages changed; update "
            "WORKER_EVENTS in deploy/chaos/evidence.py (attribution of runs is needed)",
        )
    RequestChecks(history, evidence, findings).run()
    CancelChecks(history, evidence, findings).run()
    check_telemetry(history, evidence, findings)
    jobs = sum(1 for events in history.server_events.values() if events)
    check_redis(history, jobs, findings)
    return evidence, findings


def conclude(history: History, out: Path) -> int:
    evidence, findings = check(history)
    text = render(history, evidence, findings)
    print(text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text(text + "\n")
    (out / "violations.json").write_text(
        json.dumps([asdict(v) for v in findings.violations], indent=1)
    )
    (out / "summary.json").write_text(
        json.dumps(summary(history, evidence, findings), indent=1, default=str)
    )
    print(f"history, report and violations: {out}", flush=True)
    return 1 if findings.violations else 0


async def execute(args: argparse.Namespace, seed: int, workdir: Path) -> History:
    plan = make_plan(seed, args.duration, rate=args.rate, fault_kinds=fault_kinds(args))
    history = History(seed, args.duration, time.time() - time.monotonic(), 0, plan.to_dict())
    history.load["tuning"] = tuning(args.redis_cluster)
    history.redis["mode"] = "cluster" if args.redis_cluster else "single"
    stack = ChaosStack(workdir, cluster=args.redis_cluster)
    keys = Keys(NAMESPACE)
    began = time.monotonic()
    try:
        await stack.start()
        history.load["stack_start_s"] = round(time.monotonic() - began, 1)
        redis = create_redis(stack.redis.url, max_connections=4)
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
        timeout = httpx.Timeout(10.0, connect=5.0)
        auth = {"Authorization": f"Bearer {stack.api_key}"}
        async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=auth) as http:
            upstream = FakeUpstream(http, stack.fake_url)
            history.redis["namespace"] = NAMESPACE
            history.redis["baseline"] = await collect.snapshot(redis, keys)
            history.load["loadavg_before"] = os.getloadavg()
            history.t0_ns = t0 = now_ns()
            print(f"chaos: {len(plan.requests)} requests, {len(plan.faults)} faults", flush=True)
            stored = collect.StoredEvents(redis, keys)
            gateways = len(stack.gateways)
            traffic = Traffic(http, upstream, stack.gateway_url, gateways, stored.read)
            injector = FaultInjector(stack, upstream)
            until = t0 + int(args.duration * 1e9)
            try:
                await asyncio.gather(traffic.run(plan, t0), injector.run(plan, t0, until))
                await traffic.drain()
            finally:
                history.sessions, history.faults = traffic.sessions, injector.records
            history.t_end_ns = now_ns()
            await stack.keep_redis_stalls()
            history.redis["stalls"] = stack.redis_stalls
            history.load["loadavg_after_traffic"] = os.getloadavg()
            history.load["drain_s"] = round((history.t_end_ns - until) / 1e9, 1)
            await stored.read_unfinished(r.request_id for r in plan.requests)
            history.server_events, history.server_meta = stored.found, stored.meta
            await _collect(history, stack, redis, upstream, keys, args.ttl_wait)
        await redis.aclose()
    finally:
        await stack.stop()
        history.processes = stack.lives
    return history


async def _collect(
    history: History,
    stack: ChaosStack,
    redis: Redis,
    upstream: FakeUpstream,
    keys: Keys,
    ttl_wait: str,
) -> None:
    request_ids = [r["request_id"] for r in history.plan["requests"]]
    history.upstream = await collect.upstream_attempts(upstream, set(request_ids))
    history.telemetry_drained, backlog = await collect.wait_telemetry_drained(redis, keys, 60.0)
    history.redis["telemetry_backlog"] = backlog
    history.telemetry = await collect.telemetry_documents(stack.mongodb_url, request_ids)
    history.redis["t_drained"] = time.time()
    wait = TTL_WAIT_S if ttl_wait == "full" else 0.0
    history.redis["ttl_wait"] = ttl_wait
    print(f"chaos: traffic drained; waiting up to {wait:.0f} s for the TTLs", flush=True)
    history.redis["end"] = await collect.wait_for_ttls(redis, keys, history.redis["baseline"], wait)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.recheck:
        history = History.load_file(args.recheck / "history.json")
        sys.exit(conclude(history, args.recheck))
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"{stamp}-seed{seed}"
    print(f"chaos: seed {seed}, {args.duration:.0f} s of traffic, results in {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="echotune-chaos-") as workdir:
        try:
            history = asyncio.run(execute(args, seed, Path(workdir)))
        except Exception:
            log.exception("the chaos run could not be carried out (seed %d)", seed)
            sys.exit(2)
    history.save(out / "history.json")
    sys.exit(conclude(history, out))

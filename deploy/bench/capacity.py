"""How much Redis an answer costs, measured, and how many Redis nodes a load needs.

``python -m deploy.bench.capacity [--redis-cluster] [--answers 120] [--concurrency 40]
[--sustain-s 30]`` (``make capacity``) starts Redis (or a local cluster), the fake upstream,
one gateway and two workers, then:

1. **cost per answer and per token**: ``--answers`` answers of 1 token, then as many of 33
   tokens (``--concurrency`` at a time), with ``INFO commandstats``/``stats`` of every node
   around each batch: an answer of T tokens costs ``c0 + c1·T`` commands (and bytes); the two
   batches give ``c0`` (start, pick-up, final, telemetry…) and ``c1`` (per token);
2. **CPU per token**: ``--sustain-s`` seconds of ``--concurrency`` answers of 64 tokens at once;
   Redis CPU (``/proc``) per relayed token, per node;
3. the **capacity table**: tokens/s one node sustains at 50 % of a core, and the primaries
   needed for 10k and 1M concurrent answers at 50 tokens/s each.

The workers batch appends of many answers into one pipeline, and more so under load: the
commands per token fall as the load grows, so the figures are for this concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from deploy.bench import measure, redis_nodes
from deploy.bench.run import bench_env
from deploy.local.processes import ServiceProcess, start_fake_llm, start_gateway, start_worker

IDLE_S = 5.0  # the idle baseline is measured this long
NODE_BUDGET = 0.5  # of one core: the headroom a node keeps for bursts, failovers, rewrites
LOADS = (10_000, 1_000_000)  # concurrent answers
TOKENS_PER_S = 50  # per answer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.bench.capacity", description=__doc__)
    parser.add_argument("--redis-cluster", action="store_true", help="a local Redis Cluster")
    parser.add_argument("--answers", type=int, default=120, help="answers per cost batch")
    parser.add_argument("--concurrency", type=int, default=40, help="answers at once")
    parser.add_argument("--sustain-s", type=float, default=30.0, help="seconds of the CPU phase")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="upstream time between tokens")
    parser.add_argument("--out", type=Path, default=None, help="write capacity.json here")
    return parser.parse_args(argv)


async def answer(http: httpx.AsyncClient, gateway: str, tokens: int) -> int:
    """One answer of (at most) ``tokens`` tokens through the SSE door; the deltas received."""
    body = {"message": "capacity", "options": {"max_tokens": tokens}}
    headers = {"X-Request-Id": f"cap-{uuid.uuid4().hex}"}
    deltas = 0
    async with http.stream("POST", f"{gateway}/api/chat/stream", json=body, headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line == "event: delta":
                deltas += 1
            elif line in ("event: done", "event: error"):
                break
    return deltas


async def batch(
    http: httpx.AsyncClient, gateway: str, count: int, concurrency: int, tokens: int
) -> int:
    """``count`` answers, ``concurrency`` at a time; the tokens relayed."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with gate:
            return await answer(http, gateway, tokens)

    return sum(await asyncio.gather(*(one() for _ in range(count))))


def totals(did: dict[str, dict[str, Any]], primaries: set[str]) -> dict[str, float]:
    """Commands and bytes over the primaries (replicas replay the primaries' writes)."""
    on = [d for name, d in did.items() if name in primaries]
    return {
        "commands": sum(sum(d["calls"].values()) for d in on),
        "bytes": sum(d["net_in"] + d["net_out"] for d in on),
    }


async def costs(
    http: httpx.AsyncClient, gateway: str, nodes: list[redis_nodes.Node], args: argparse.Namespace
) -> dict[str, Any]:
    """Commands and bytes per answer (``c0``) and per token (``c1``), on the primaries."""
    primaries = {n.name for n in nodes if "replica" not in n.name}
    measured = {}
    for tokens in (1, 33):
        before = await redis_nodes.snapshot(nodes)
        relayed = await batch(http, gateway, args.answers, args.concurrency, tokens)
        did = redis_nodes.difference(before, await redis_nodes.snapshot(nodes))
        measured[tokens] = {"tokens": relayed, **totals(did, primaries), "by_node": did}
    one, many = measured[1], measured[33]
    extra_tokens = max(many["tokens"] - one["tokens"], 1)
    per_token = {k: (many[k] - one[k]) / extra_tokens for k in ("commands", "bytes")}
    per_answer = {
        k: (one[k] - per_token[k] * one["tokens"]) / args.answers for k in ("commands", "bytes")
    }
    commands: dict[str, float] = {}
    for name, did in many["by_node"].items():
        if name not in primaries:
            continue
        for command, calls in did["calls"].items():
            base = one["by_node"].get(name, {}).get("calls", {}).get(command, 0)
            commands[command] = commands.get(command, 0) + (calls - base) / extra_tokens
    top = dict(sorted(((c, round(n, 3)) for c, n in commands.items()), key=lambda kv: -kv[1]))
    return {
        "per_answer": {k: round(v, 1) for k, v in per_answer.items()},
        "per_token": {k: round(v, 2) for k, v in per_token.items()},
        "per_token_by_command": {c: n for c, n in list(top.items())[:8] if n > 0.005},
        "batches": {
            t: {k: m[k] for k in ("tokens", "commands", "bytes")} for t, m in measured.items()
        },
    }


async def cpu(
    http: httpx.AsyncClient, gateway: str, nodes: list[redis_nodes.Node], args: argparse.Namespace
) -> dict[str, Any]:
    """Redis CPU per relayed token, per node, over ``sustain_s`` of steady load, less what the
    node spends idle (cron, cluster bus, the services' polling) in as much time."""
    await lane_warmup(http, gateway)
    idle_from = {n.name: measure.cpu_seconds(n.pid) for n in nodes}
    await asyncio.sleep(IDLE_S)
    idle_rate = {n.name: (measure.cpu_seconds(n.pid) - idle_from[n.name]) / IDLE_S for n in nodes}
    began, deadline = time.monotonic(), time.monotonic() + args.sustain_s
    relayed = 0

    async def lane() -> None:
        nonlocal relayed
        while time.monotonic() < deadline:
            tokens = await answer(http, gateway, 64)  # awaited first: `+=` would lose updates
            relayed += tokens

    before = {n.name: measure.cpu_seconds(n.pid) for n in nodes}
    await asyncio.gather(*(lane() for _ in range(args.concurrency)))
    wall = time.monotonic() - began
    used = {n.name: measure.cpu_seconds(n.pid) - before[n.name] for n in nodes}
    marginal = {name: max(sec - idle_rate[name] * wall, 0.0) for name, sec in used.items()}
    total = sum(marginal.values()) or 1e-9
    return {
        "tokens": relayed,
        "tokens_per_s": round(relayed / wall, 1),
        "idle_pct": {name: round(100 * rate, 2) for name, rate in idle_rate.items()},
        "busy_pct": {name: round(100 * sec / wall, 1) for name, sec in used.items()},
        "us_per_token": {
            name: round(1e6 * sec / max(relayed, 1), 2) for name, sec in marginal.items()
        },
        "share_pct": {name: round(100 * sec / total, 1) for name, sec in marginal.items()},
    }


async def lane_warmup(http: httpx.AsyncClient, gateway: str) -> None:
    await batch(http, gateway, 8, 8, 8)


def table(result: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s a node sustains at ``NODE_BUDGET`` and the primaries each load needs."""
    per_node = result["cpu"]["us_per_token"]
    primaries = {k: v for k, v in per_node.items() if "replica" not in k}
    spent = sum(primaries.values())  # µs of primary CPU per token, all primaries together
    per_node_tps = NODE_BUDGET * 1e6 / spent if spent else None
    rows = []
    for load in LOADS:
        tps = load * TOKENS_PER_S
        nodes = math.ceil(tps / per_node_tps) if per_node_tps else None
        rows.append({"answers": load, "tokens_per_s": tps, "primaries": nodes})
    return {
        "primary_us_per_token": round(spent, 2),
        "node_tokens_per_s": per_node_tps,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    c, p, t = result["costs"], result["cpu"], result["table"]
    mode = "Redis Cluster (3 primaries, 3 replicas)" if result["cluster"] else "one Redis"
    lines = [
        f"## Redis capacity — {mode}, {result['concurrency']} answers at once",
        "",
        f"Machine: {result['machine']['nproc']} CPU ({result['machine']['cpu_model']}), "
        f"loadavg before `{result['loadavg_before']}`, after `{result['loadavg_after']}` "
        "(shared with other work: CPU figures are upper bounds).",
        "",
        "Commands as `INFO commandstats` counts them: a script call (`evalsha`) and each command "
        "it runs inside.",
        "",
        "| per | commands | bytes in+out |",
        "|---|---:|---:|",
        f"| answer (start, pick-up, final, telemetry…) | {c['per_answer']['commands']} "
        f"| {c['per_answer']['bytes']:.0f} |",
        f"| token | {c['per_token']['commands']} | {c['per_token']['bytes']:.0f} |",
        "",
        "Per token by command: "
        + ", ".join(f"{k} {v}" for k, v in c["per_token_by_command"].items()),
        "",
        f"CPU at {p['tokens_per_s']} tokens/s, beyond each node's idle use: "
        + ", ".join(
            f"{name} {us} µs/token ({p['share_pct'][name]} % of the Redis CPU; busy "
            f"{p['busy_pct'][name]} %, idle {p['idle_pct'][name]} %)"
            for name, us in p["us_per_token"].items()
        ),
        "",
        f"One primary at {100 * NODE_BUDGET:.0f} % of a core: about "
        f"{t['node_tokens_per_s']:,.0f} tokens/s ({t['primary_us_per_token']} µs of primary CPU "
        "per token).",
        "",
        "| concurrent answers | tokens/s (50 each) | primaries at 50 % CPU |",
        "|---:|---:|---:|",
    ]
    for row in t["rows"]:
        lines.append(f"| {row['answers']:,} | {row['tokens_per_s']:,} | {row['primaries']:,} |")
    return "\n".join(lines)


async def capacity_main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = measure.loadavg()
    api_key = f"et_cap{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"
    services: list[ServiceProcess] = []
    with redis_nodes.redis_for_bench(args.redis_cluster) as (redis_url, ports):
        try:
            fake, fake_url = await start_fake_llm(
                "--pace-ms", str(args.pace_ms), "--ttft-ms", "20", "--tokens", "64"
            )
            services.append(fake)
            env = bench_env(
                redis_url,
                fake_url,
                api_key,
                log_level="WARNING",
                concurrency=args.concurrency,
                name="cap",
            )
            gateway, gateway_url = await start_gateway(env)
            services.append(gateway)
            services += [await start_worker(env, name=f"worker{i + 1}") for i in range(2)]
            nodes = await redis_nodes.nodes_of(ports, args.redis_cluster)
            limits = httpx.Limits(max_connections=args.concurrency + 10)
            auth = {"Authorization": f"Bearer {api_key}"}
            async with httpx.AsyncClient(timeout=120, limits=limits, headers=auth) as http:
                await lane_warmup(http, gateway_url)
                result = {
                    "cluster": args.redis_cluster,
                    "concurrency": args.concurrency,
                    "costs": await costs(http, gateway_url, nodes, args),
                    "cpu": await cpu(http, gateway_url, nodes, args),
                }
        except Exception:
            for proc in services:  # what the services said, to tell why
                print(f"--- {proc.name}\n" + "\n".join(proc.lines[-60:]), file=sys.stderr)
            raise
        finally:
            for proc in reversed(services):
                await proc.stop()
    result |= {
        "machine": measure.machine(),
        "loadavg_before": load_before,
        "loadavg_after": measure.loadavg(),
    }
    result["table"] = table(result)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = asyncio.run(capacity_main(args))
    text = markdown(result)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "capacity.json").write_text(json.dumps(result, indent=1))
        (args.out / "capacity.md").write_text(text + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()

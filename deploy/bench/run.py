"""Orchestrates the benchmark: the stack, the client processes, the rounds, the report.

Run: ``make bench [ARGS="..."]`` or ``python -m deploy.bench [--levels 1,10,50,100,500]
[--tokens 64] [--pace-ms 20] [--ttft-ms 50] [--workers 2] [--rounds 3] [--clients 2]
[--trials 30] [--quick] [--tracing] [--out DIR] [--profile gateway,worker1 --profile-level 100]
[--upstream fake|local] [--redis-cluster]``. ``--redis-cluster`` runs the stack on a local
Redis Cluster (3 primaries, a replica each) and reports how the load spreads over its nodes.
``--upstream local`` measures llama.cpp with SmolLM2 instead of the
fake upstream (:mod:`deploy.bench.local`).
``--quick`` (levels 1 and 5, one round, 5 trials) is the smoke run. ``--compare OLD NEW``
prints two ``results.json`` side by side (:mod:`deploy.bench.compare`). Results: ``results.json``,
``results.md`` and ``latency.png`` in ``bench/results/<time>/`` (git-ignored) or ``--out``;
the Markdown table is printed at the end. ``--profile`` runs ``py-spy record`` on the named
processes (gateway, worker1, fake-llm, client1; not redis) during the rounds of
``--profile-level`` and adds their top frames to the report (profiling perturbs the numbers:
profile in a separate run). ``--tracing`` turns OpenTelemetry tracing on in the gateway and
the workers, exporting to an OTLP sink process (``otlp_sink.py``) that counts the spans: run
once with and once without it to see what tracing costs per token.

Per concurrency level L, each round runs L *slots* whose starts are spread evenly over one
nominal stream duration (staggered: producers do not tick at the same instant); a slot runs
its streams one after the other, so about L streams are open at any time. Rounds alternate the
arms (A B, B A, A B, ...) so that drift of the shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import secrets
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from deploy.bench import compare, measure, redis_nodes, report, timeline
from deploy.bench.client import A, B, Stream, Target, client_main
from deploy.local.processes import PYTHON, ROOT, ServiceProcess, start_gateway, start_worker

RESULTS = ROOT / "bench" / "results"


@dataclass
class Proc:
    """A process whose CPU is accounted."""

    name: str
    pid: int


@dataclass
class Bench:
    args: argparse.Namespace
    target: Target
    fake_url: str
    procs: list[Proc]
    gateway_pid: int
    clients: list[tuple[multiprocessing.process.BaseProcess, Connection]]
    http: httpx.AsyncClient
    nodes: list[redis_nodes.Node] = field(default_factory=list)
    redis_url: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--levels", default=None, help="concurrent streams (1,10,50,100,500)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="upstream time between tokens")
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="upstream time to first token")
    parser.add_argument("--workers", type=int, default=2, help="LLM worker processes (K)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per level and arm")
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument("--min-streams", type=int, default=None, help="streams per round at least")
    parser.add_argument("--trials", type=int, default=None, help="cancel and resume trials each")
    parser.add_argument("--quick", action="store_true", help="small levels, one round (smoke run)")
    parser.add_argument("--log-level", default="WARNING", help="services' ECHOTUNE_LOG_LEVEL")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--profile",
        default="",
        help="py-spy these processes (gateway, worker1, ...) at --profile-level",
    )
    parser.add_argument("--profile-level", type=int, default=100)
    parser.add_argument(
        "--timeline",
        type=int,
        default=0,
        metavar="N",
        help="N more answers at 1 stream with Redis MONITOR on: where the first token's time goes",
    )
    parser.add_argument(
        "--upstream",
        choices=("fake", "local"),
        default="fake",
        help="fake: the scripted fake LLM; local: llama.cpp + SmolLM2 (deploy/bench/local.py)",
    )
    parser.add_argument(
        "--tracing", action="store_true", help="OpenTelemetry on, spans to a counting sink"
    )
    parser.add_argument(
        "--redis-cluster", action="store_true", help="a local Redis Cluster instead of one Redis"
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("OLD_JSON", "NEW_JSON"),
        help="print two results.json side by side (runs nothing)",
    )
    args = parser.parse_args(argv)
    default_levels = "1,5" if args.quick else "1,10,50,100,500"
    if args.upstream == "local":
        default_levels = "1" if args.quick else "1,4"
    args.levels = [int(x) for x in (args.levels or default_levels).split(",")]
    # a real model's timings vary more from answer to answer: more rounds for a stable median
    args.rounds = args.rounds or (1 if args.quick else 10 if args.upstream == "local" else 3)
    args.min_streams = args.min_streams or (4 if args.quick else 10)
    args.trials = args.trials if args.trials is not None else (5 if args.quick else 30)
    args.profile = [p for p in args.profile.split(",") if p]
    if args.timeline < 0:
        parser.error("--timeline takes a number of answers (0: none)")
    if args.timeline and (args.redis_cluster or args.upstream == "local"):
        parser.error("--timeline needs one Redis and the fake upstream")
    return args


def nominal_s(args: argparse.Namespace) -> float:
    return float(args.ttft_ms + args.tokens * args.pace_ms) / 1000


# --- the stack ------------------------------------------------------------------------------


def bench_env(
    redis_url: str, fake_url: str, api_key: str, *, log_level: str, concurrency: int, name: str
) -> dict[str, str]:
    """The stack's settings for a benchmark: one provider on the fake upstream, no limits."""
    provider = {
        "name": "bench",
        "kind": "openai",
        "base_url": f"{fake_url}/v1",
        "api_key": "sk-bench-0123456789",
        "models": ["gpt-fake"],
        "timeouts": {"connect": 5, "first_token": 30, "idle": 30, "total": 600},
    }
    huge = "1000000"
    return {
        "ECHOTUNE_REDIS_URL": redis_url,
        "ECHOTUNE_NAMESPACE": f"{name}{uuid.uuid4().hex[:8]}",
        "ECHOTUNE_PROVIDERS": json.dumps([provider]),
        "ECHOTUNE_DEFAULT_PROVIDER": "bench",
        "ECHOTUNE_FALLBACKS": "[]",
        "ECHOTUNE_LOG_LEVEL": log_level,
        "ECHOTUNE_DEV_API_KEY": api_key,
        "ECHOTUNE_GATEWAY_SESSION_SECRET": secrets.token_urlsafe(16),
        "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_USER": huge,
        "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_IP": huge,
        "ECHOTUNE_GATEWAY_MAX_OPEN_STREAMS_PER_USER": huge,
        "ECHOTUNE_GATEWAY_MAX_BACKLOG": huge,
        "ECHOTUNE_WORKER_CONCURRENCY": str(concurrency + 16),
    }


def stack_env(
    args: argparse.Namespace, redis_url: str, fake_url: str, api_key: str
) -> dict[str, str]:
    # every worker must be able to take all the streams of the largest level
    env = bench_env(
        redis_url,
        fake_url,
        api_key,
        log_level=args.log_level,
        concurrency=max(args.levels),
        name="bench",
    )
    return {**env, "ECHOTUNE_WORKER_STAMP_TOKENS": "true"}


def start_clients(count: int) -> list[tuple[multiprocessing.process.BaseProcess, Connection]]:
    context = multiprocessing.get_context("spawn")
    clients: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    for index in range(count):
        ours, theirs = context.Pipe()
        proc = context.Process(
            target=client_main, args=(theirs,), name=f"client{index + 1}", daemon=True
        )
        proc.start()
        theirs.close()
        clients.append((proc, ours))
    return clients


async def ask(conn: Connection, cmd: dict[str, Any] | None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    conn.send(cmd)
    if cmd is None:
        return {}
    reply: dict[str, Any] = await loop.run_in_executor(None, conn.recv)
    if "failure" in reply:
        raise RuntimeError(f"client failed: {reply['failure']}")
    return reply


# --- rounds ---------------------------------------------------------------------------------


def cpu_snapshot(procs: list[Proc]) -> dict[str, float]:
    return {p.name: measure.cpu_seconds(p.pid) for p in procs}


async def reset_fake(bench: Bench) -> None:
    await bench.http.delete(f"{bench.fake_url}/_control")


async def run_round(
    bench: Bench, level: int, arm: str, index: int, *, record: bool = True
) -> dict[str, Any]:
    args = bench.args
    # two streams per slot keep ~L streams open for a while; past 200 one is enough (the
    # machine is saturated: every stream outlasts the stagger window)
    per_slot = max(1 if level >= 200 else 2, math.ceil(args.min_streams / level))
    window_ns = int(nominal_s(args) * 1e9) if level > 1 else 0
    slots = [(i, i * window_ns // level, per_slot) for i in range(level)]
    clients = bench.clients[: min(len(bench.clients), level)]
    timeout = max(180.0, 30 * nominal_s(args))
    t0 = time.monotonic_ns() + 200_000_000
    tag = f"{arm}{level}r{index}"
    commands = [
        {
            "kind": "round",
            "target": bench.target,
            "arm": arm,
            "t0_ns": t0,
            "timeout_s": timeout,
            "tag": tag,
            "slots": slots[c :: len(clients)],
        }
        for c in range(len(clients))
    ]
    before_nodes = await redis_nodes.snapshot(bench.nodes)
    before_cpu, before_machine = cpu_snapshot(bench.procs), measure.machine_cpu()
    rss_before = measure.rss_kib(bench.gateway_pid)
    samples: list[tuple[int, dict[str, float]]] = []
    rss_max = rss_before

    async def sample() -> None:
        nonlocal rss_max
        while True:
            samples.append((time.monotonic_ns(), cpu_snapshot(bench.procs)))
            rss_max = max(rss_max, measure.rss_kib(bench.gateway_pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    try:
        replies = await asyncio.gather(
            *(ask(conn, cmd) for (_, conn), cmd in zip(clients, commands, strict=True))
        )
    finally:
        sampler.cancel()
    after_cpu, after_machine = cpu_snapshot(bench.procs), measure.machine_cpu()
    nodes_did = redis_nodes.difference(before_nodes, await redis_nodes.snapshot(bench.nodes))
    streams: list[Stream] = [s for r in replies for s in r["streams"]]
    # when each request reached the upstream (the fake records it by X-Request-Id)
    upstream = (await bench.http.get(f"{bench.fake_url}/_control/requests")).json()
    upstream_ns = {s.rid: upstream[s.rid][0]["started_ns"] for s in streams if upstream.get(s.rid)}
    to_upstream = [upstream_ns[s.rid] - s.start_ns for s in streams if s.rid in upstream_ns]
    upstream_pace = [  # the fake's own time per token, each attempt by what it sent
        (a["ended_ns"] - a["first_token_ns"]) / (a["tokens_sent"] - 1)
        for s in streams
        for a in upstream.get(s.rid, ())
        if a["tokens_sent"] > 1 and a["first_token_ns"] and a["ended_ns"]
    ]
    lag = [x for r in replies for x in r["lag_ns"]]
    started = min(s.start_ns for s in streams)
    ended = max(s.end_ns or s.start_ns for s in streams)
    wall_s = max((ended - started) / 1e9, 1e-9)
    cpu = {name: after_cpu[name] - before_cpu[name] for name in after_cpu}
    busy = after_machine[0] - before_machine[0]
    total = max(after_machine[1] - before_machine[1], 1e-9)
    client_names = [p.name for p in bench.procs if p.name.startswith("client")]
    result = {
        "level": level,
        "arm": arm,
        "round": index,
        "streams": streams,
        "lag_ns": lag,
        "to_upstream_ns": to_upstream,
        "upstream_pace_ns": upstream_pace,
        "upstream_ns": upstream_ns,
        "cpu_s": cpu,
        "wall_s": wall_s,
        "round_wall_s": (time.monotonic_ns() - t0) / 1e9,
        "rss_before_kib": rss_before,
        "rss_max_kib": rss_max,
        "peak_open": peak_open(streams),
        "machine_busy_pct": 100 * busy / total,
        "ours_pct": 100 * sum(cpu.values()) / total,
        "client_util_max": max_util(samples, client_names),
        "redis_nodes": nodes_did,
    }
    if record:
        bench.rounds.append(result)
    await asyncio.sleep(0.3)
    await reset_fake(bench)
    return result


def peak_open(streams: list[Stream]) -> int:
    events = sorted(
        [(s.start_ns, 1) for s in streams] + [(s.end_ns or s.start_ns, -1) for s in streams]
    )
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def max_util(
    samples: list[tuple[int, dict[str, float]]], names: list[str], window_s: float = 0.5
) -> float:
    """Highest CPU use of any one of ``names`` over a ``window_s`` window (1.0 = one core)."""
    best = 0.0
    for i, (t_i, cpu_i) in enumerate(samples):
        for t_j, cpu_j in samples[i + 1 :]:
            if (t_j - t_i) / 1e9 >= window_s:
                span = (t_j - t_i) / 1e9
                best = (
                    max(best, *(max(cpu_j[n] - cpu_i[n], 0) / span for n in names))
                    if names
                    else best
                )
                break
    return round(best, 3)


# --- trials ---------------------------------------------------------------------------------


async def fake_attempt(bench: Bench, rid: str) -> dict[str, Any] | None:
    """The first upstream request of ``rid`` (and how many there were)."""
    response = await bench.http.get(f"{bench.fake_url}/_control/requests/{rid}", params={"wait": 5})
    attempts = response.json()
    return {**attempts[0], "count": len(attempts)} if attempts else None


async def cancel_trials(bench: Bench) -> list[dict[str, Any]]:
    args = bench.args
    rids = [
        (arm, f"bench-cancel-{arm}{i}-{uuid.uuid4().hex[:8]}")
        for i in range(args.trials)
        for arm in (A, B)
    ]
    # an answer far longer than the trial: the upstream must not finish before the cancel lands
    step = {"token_count": max(1000, 10 * args.tokens), "pace_ms": args.pace_ms}
    await asyncio.gather(
        *(
            bench.http.put(f"{bench.fake_url}/_control/scripts/{rid}", json={"attempts": [step]})
            for _, rid in rids
        )
    )
    cmd = {
        "kind": "cancel",
        "target": bench.target,
        "rids": rids,
        "after": max(1, min(5, args.tokens // 2)),
        "timeout_s": 30.0,
        "spacing_s": 0.05,
    }
    trials = (await ask(bench.clients[0][1], cmd))["trials"]
    for trial in trials:
        if trial.get("error"):
            continue
        attempt = await fake_attempt(bench, trial["rid"])
        if attempt is None or attempt.get("ended_ns") is None:
            trial["error"] = "upstream request not found or not ended"
            continue
        trial["closed_by_client"] = attempt["closed_by_client"]
        trial["upstream_tokens"] = attempt["tokens_sent"]
        trial["upstream_requests"] = attempt["count"]
        trial["upstream_close_ns"] = attempt["ended_ns"] - trial["cancel_ns"]
        if not attempt["closed_by_client"]:
            trial["error"] = f"upstream ended by itself ({attempt['outcome']})"
        elif trial["arm"] == B and trial.get("final") != "done:cancelled":
            trial["error"] = f"final event {trial.get('final')!r}, expected done:cancelled"
    await reset_fake(bench)
    return list(trials)


async def resume_trials(bench: Bench) -> list[dict[str, Any]]:
    args = bench.args
    rids = [(B, f"bench-resume-{i}-{uuid.uuid4().hex[:8]}") for i in range(args.trials)]
    after, gap_s = max(1, min(5, args.tokens // 2)), max(0.03, 3 * args.pace_ms / 1000)
    # the answer must still be streaming when the client comes back (else: 204, nothing to resume)
    tokens = max(args.tokens, after + 4 + 4 * math.ceil(gap_s * 1000 / max(args.pace_ms, 1)))
    step = {"token_count": tokens, "pace_ms": args.pace_ms}
    await asyncio.gather(
        *(
            bench.http.put(f"{bench.fake_url}/_control/scripts/{rid}", json={"attempts": [step]})
            for _, rid in rids
        )
    )
    cmd = {
        "kind": "resume",
        "target": bench.target,
        "rids": rids,
        "after": after,
        "gap_s": gap_s,
        "expect": tokens,
        "timeout_s": 30.0,
        "spacing_s": 0.05,
    }
    trials = (await ask(bench.clients[0][1], cmd))["trials"]
    await reset_fake(bench)
    return list(trials)


# --- profiling ------------------------------------------------------------------------------


class Profiler:
    """py-spy record (raw collapsed stacks) of some processes while their rounds run."""

    def __init__(self, out: Path, targets: dict[str, int]) -> None:
        self.out, self.targets = out, targets
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.binary = str(Path(sys.executable).parent / "py-spy")

    async def start(self) -> None:
        for name, pid in self.targets.items():
            self.procs[name] = await asyncio.create_subprocess_exec(
                self.binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--gil",  # samples holding the GIL: uvloop waits for I/O without it, and
                # py-spy's idle detection missed those waits (a quarter of a worker's samples;
                # C that releases the GIL, as TLS or zlib, is left out too)
                "--output",
                str(self.out / f"profile-{name}.txt"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        await asyncio.sleep(1.0)  # py-spy attaches

    async def stop(self) -> dict[str, Any]:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        summaries: dict[str, Any] = {}
        for name, proc in self.procs.items():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 20)
            summaries[name] = report.summarize_profile(self.out / f"profile-{name}.txt")
        return summaries


# --- main -----------------------------------------------------------------------------------


async def bench_main(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out or RESULTS / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before anything runs)
    load_before = measure.loadavg()
    api_key = f"et_bench{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"
    services: list[ServiceProcess] = []
    clients = start_clients(args.clients)
    started = time.monotonic()
    with redis_nodes.redis_for_bench(args.redis_cluster) as (redis_url, ports):
        fake = ServiceProcess(
            "fake-llm",
            [
                PYTHON,
                "-m",
                "echotune.fake_llm",
                "--port",
                "0",
                "--ttft-ms",
                str(args.ttft_ms),
                "--pace-ms",
                str(args.pace_ms),
                "--tokens",
                str(args.tokens),
                "--stamp",
            ],
            {},
        )
        try:
            port = int((await fake.start(r"FAKE_LLM_READY port=(\d+)")).group(1))
            services.append(fake)
            fake_url = f"http://127.0.0.1:{port}"
            env = stack_env(args, redis_url, fake_url, api_key)
            sink_url = None
            if args.tracing:
                sink = ServiceProcess("otlp-sink", [PYTHON, "-m", "deploy.bench.otlp_sink"], {})
                sink_port = (await sink.start(r"OTLP_SINK_READY port=(\d+)")).group(1)
                services.append(sink)
                sink_url = f"http://127.0.0.1:{sink_port}"
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink_url
            gateway, gateway_url = await start_gateway(env)
            services.append(gateway)
            workers = [await start_worker(env, name=f"worker{i + 1}") for i in range(args.workers)]
            services += workers
            await asyncio.gather(*(ask(conn, {"kind": "ping"}) for _, conn in clients))
            gw_host, _, gw_port = gateway_url.removeprefix("http://").rpartition(":")
            target = Target("127.0.0.1", port, gw_host, int(gw_port), api_key, "gpt-fake", "bench")
            procs = [Proc("gateway", gateway.pid)]
            procs += [Proc(w.name, w.pid) for w in workers]
            nodes = await redis_nodes.nodes_of(ports, args.redis_cluster)
            procs += [Proc(node.name, node.pid) for node in nodes]
            procs.append(Proc("fake-llm", fake.pid))
            procs += [Proc(f"client{i + 1}", p.pid or 0) for i, (p, _) in enumerate(clients)]
            procs.append(Proc("bench", os.getpid()))
            async with httpx.AsyncClient(timeout=30) as http:
                bench = Bench(
                    args, target, fake_url, procs, gateway.pid, clients, http, nodes, redis_url
                )
                results = await drive(bench, out)
                if sink_url is not None:
                    await asyncio.sleep(6)  # the batch processors export every 5 s
                    results["tracing"] = (await http.get(f"{sink_url}/stats")).json()
        finally:
            for proc in reversed(services):
                await proc.stop()
            for _, conn in clients:
                with contextlib.suppress(OSError):
                    conn.send(None)
            for client, _ in clients:
                client.join(5)
                if client.is_alive():
                    client.kill()
    results["machine"] = {
        **measure.machine(),
        "loadavg_before": load_before,
        "loadavg_after": measure.loadavg(),
    }
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return report.write(results, out, plot=not args.no_plot)


async def drive(bench: Bench, out: Path) -> dict[str, Any]:
    args = bench.args
    say(f"warm-up; levels {args.levels}, {args.rounds} round(s) per arm")
    for arm in (A, B):
        await run_round(bench, min(10, max(args.levels)), arm, 0, record=False)
    profiles: dict[str, Any] = {}
    for level in args.levels:
        profiler = None
        if args.profile and level == args.profile_level:
            pids = {p.name: p.pid for p in bench.procs}
            profiler = Profiler(out, {name: pids[name] for name in args.profile})
            await profiler.start()
        for index in range(args.rounds):
            for arm in (A, B) if index % 2 == 0 else (B, A):
                result = await run_round(bench, level, arm, index)
                errors = sum(1 for s in result["streams"] if s.error)
                tokens = sum(s.tokens for s in result["streams"])
                say(
                    f"level {level:4d} {arm} round {index + 1}: {len(result['streams'])} streams, "
                    f"{tokens} tokens in {result['wall_s']:.1f} s, "
                    f"peak open {result['peak_open']}, "
                    f"errors {errors}, machine busy {result['machine_busy_pct']:.0f}%"
                )
        if profiler is not None:
            profiles = await profiler.stop()
    cancels = resumes = []
    if args.trials:
        say(f"cancel trials ({args.trials} per arm)")
        cancels = await cancel_trials(bench)
        say(f"resume trials ({args.trials})")
        resumes = await resume_trials(bench)
    results = report.aggregate(
        bench.rounds, cancels, resumes, profiles, vars(args) | {"out": str(out)}
    )
    if args.timeline:
        say(f"timeline ({args.timeline} answers at 1 stream, Redis MONITOR on)")
        results["timeline"] = await first_token_timeline(bench, args.timeline)
    return results


async def first_token_timeline(bench: Bench, answers: int) -> dict[str, Any]:
    """Extra rounds at 1 stream with Redis MONITOR on, kept out of the latency and CPU figures."""
    streams: list[Stream] = []
    upstream: dict[str, int] = {}
    async with timeline.Monitor(bench.redis_url) as monitor:
        while len(streams) < answers:
            result = await run_round(bench, 1, B, len(streams), record=False)
            streams += result["streams"]
            upstream |= result["upstream_ns"]
    return timeline.summarize(streams[:answers], monitor.commands, upstream)


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that the stack is stopped on SIGTERM too


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare:
        compare.main(*args.compare)
        return
    signal.signal(signal.SIGTERM, _interrupt)
    if args.upstream == "local":
        from deploy.bench.local import bench_local  # needs the local-model group

        results = asyncio.run(bench_local(args))
    else:
        results = asyncio.run(bench_main(args))
    print(results["markdown"])
    print(f"\nresults: {results['files']['json']}\n         {results['files']['markdown']}")
    if results["files"].get("plot"):
        print(f"         {results['files']['plot']}")

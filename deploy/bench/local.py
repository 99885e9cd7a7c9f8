"""``make bench ARGS="--upstream local"``: a real model, directly and through echotune.

The upstream is llama.cpp's server with SmolLM2-135M (deploy/local/local_model.py, the
``local-model`` group). Arm A: client → llama.cpp server. Arm B: client → gateway → Redis →
worker → llama.cpp server → worker → Redis → gateway → client. Both send the worker's messages
(system prompt, then the question, made unique by a tag: see :func:`question`) at temperature 0
with ``max_tokens = --tokens``. Per level L (``--levels``, default 1,4) each round starts L
streams at once, ``--rounds`` rounds per arm alternating A B / B A; llama.cpp answers one at a
time, so beyond L = 1 the time to first token includes the queue.

Figures per level and arm: TTFT (request sent → first token at the client), tokens/s of one
stream (tokens after the first / time from the first to the last), aggregate tokens/s (all
tokens of a round / its wall time). Cancel trials (``--trials`` per arm): after 8 tokens A closes
the stream, B POSTs the cancel; the server's CPU time after that moment, in tokens' worth of
CPU (measured over a whole answer first), says how much it still generated
(deploy/bench/cpu_trace.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from deploy.bench import measure
from deploy.bench.client import SYSTEM_PROMPT
from deploy.bench.cpu_trace import CpuTrace
from deploy.local import local_model
from deploy.local.processes import ROOT, ServiceProcess, start_gateway, start_worker
from deploy.local.servers import local_redis

A, B = "A", "B"
PROMPT = "Write a very long story about a musician who travels the world, with many chapters."
CANCEL_AFTER = 8
RESULTS = ROOT / "bench" / "results"


@dataclass
class Sample:
    """One stream as the client saw it (times: CLOCK_MONOTONIC seconds)."""

    arm: str
    start: float
    first: float = 0.0
    last: float = 0.0
    tokens: int = 0
    final: str = ""
    ended: float = 0.0  # final event received
    error: str = ""

    @property
    def ttft_ms(self) -> float | None:
        return (self.first - self.start) * 1000 if self.first else None

    @property
    def tokens_per_s(self) -> float | None:
        span = self.last - self.first
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else None


@dataclass(frozen=True)
class Target:
    llama_url: str  # …/v1
    gateway_url: str
    api_key: str
    tokens: int


def question() -> str:
    """The question, made unique: llama.cpp reuses the evaluated prompt of the previous request
    where it matches, so an identical one would have nothing left to evaluate before its first
    token; the shared system prompt is reused, as it would be between real users."""
    return f"{PROMPT} (Story {uuid.uuid4().hex[:6]}.)"


def body_a(target: Target) -> dict[str, Any]:
    """What the worker sends to the server for a question of arm B."""
    return {
        "model": local_model.model_name(),
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question()},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": target.tokens,
    }


def body_b(target: Target) -> dict[str, Any]:
    options = {"temperature": 0, "max_tokens": target.tokens, "use_context": False}
    return {"message": question(), "provider": local_model.PROVIDER, "options": options}


async def stream(
    http: httpx.AsyncClient, target: Target, arm: str, *, cancel_after: int | None = None
) -> tuple[Sample, list[float], float]:
    """One answer; with ``cancel_after``, cancelled after that many tokens (A: the stream is
    closed; B: POST cancel, then read to the final event). The sample, each token's arrival,
    and when the cancel was made (0 if none)."""
    sample, arrivals, cancelled_at = Sample(arm, time.monotonic()), [], 0.0
    rid = f"bench-local-{uuid.uuid4().hex}"
    if arm == A:
        url, body, headers = f"{target.llama_url}/chat/completions", body_a(target), {}
    else:
        url, body = f"{target.gateway_url}/api/chat/stream", body_b(target)
        headers = {"Authorization": f"Bearer {target.api_key}", "X-Request-Id": rid}
    try:
        async with aconnect_sse(http, "POST", url, json=body, headers=headers) as source:
            async for event in source.aiter_sse():
                if _token(arm, event.event, event.data):
                    now = time.monotonic()
                    sample.first, sample.last = sample.first or now, now
                    sample.tokens += 1
                    arrivals.append(now)
                elif final := _final(arm, event.event, event.data):
                    sample.final, sample.ended = final, time.monotonic()
                    break
                if cancel_after and not cancelled_at and sample.tokens == cancel_after:
                    cancelled_at = time.monotonic()
                    if arm == A:
                        break  # leaving the block closes the connection
                    await http.post(
                        f"{target.gateway_url}/api/chat/{rid}/cancel",
                        headers={"Authorization": f"Bearer {target.api_key}"},
                    )
    except httpx.HTTPError as exc:
        sample.error = type(exc).__name__
    if not sample.error and not sample.final and not (arm == A and cancelled_at):
        sample.error = "no final event"
    if sample.final.startswith("error"):
        sample.error = sample.final
    return sample, arrivals, cancelled_at


def _token(arm: str, event: str, data: str) -> bool:
    if arm == B:
        return event == "delta"
    if not data.startswith("{"):
        return False
    choices = json.loads(data).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def _final(arm: str, event: str, data: str) -> str:
    if arm == A:
        return "[DONE]" if data.strip() == "[DONE]" else ""
    if event in ("done", "error"):
        payload = json.loads(data)
        return f"{event}:{payload.get('finish_reason') or payload.get('code')}"
    return ""


async def run_round(
    http: httpx.AsyncClient, target: Target, arm: str, level: int
) -> dict[str, Any]:
    started = time.monotonic()
    results = await asyncio.gather(*(stream(http, target, arm) for _ in range(level)))
    samples = [sample for sample, _, _ in results]
    return {"arm": arm, "level": level, "wall_s": time.monotonic() - started, "samples": samples}


async def cpu_per_token(http: httpx.AsyncClient, target: Target, llama_pid: int) -> float:
    """The server's CPU ns per generated token, over a whole answer of arm A (its prompt left
    out): what a token's worth of CPU is in the cancel trials."""
    trace = CpuTrace(llama_pid)
    sampling = asyncio.create_task(trace.run())
    try:
        _, arrivals, _ = await stream(http, target, A)
    finally:
        sampling.cancel()
    return trace.per_token(arrivals[0], arrivals[-1], len(arrivals) - 1)


async def cancel_trial(
    http: httpx.AsyncClient, target: Target, arm: str, llama_pid: int, per_token: float
) -> dict[str, Any]:
    trace = CpuTrace(llama_pid)
    sampling = asyncio.create_task(trace.run())
    try:
        sample, arrivals, cancelled_at = await stream(http, target, arm, cancel_after=CANCEL_AFTER)
    finally:
        sampling.cancel()
    trial: dict[str, Any] = {"arm": arm, "final": sample.final, "error": sample.error}
    if not cancelled_at or len(arrivals) < CANCEL_AFTER:
        trial["error"] = trial["error"] or "ended before the cancel"
        return trial
    idle_from = await trace.until_idle(after=cancelled_at)
    after = trace.at(idle_from) - trace.at(cancelled_at)
    trial["tokens_after"] = round(after / per_token, 2)
    trial["busy_after_ms"] = round(
        (trace.busy_until(cancelled_at, idle_from) - cancelled_at) * 1000, 1
    )
    if arm == B:
        trial["cancel_to_final_ms"] = round((sample.ended - cancelled_at) * 1000, 1)
        if sample.final != "done:cancelled":
            trial["error"] = trial["error"] or f"final {sample.final!r}"
    return trial


# --- report ---------------------------------------------------------------------------------


def arm_stats(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    samples: list[Sample] = [s for r in rounds for s in r["samples"]]
    ok = [s for s in samples if not s.error]
    tokens = sum(s.tokens for s in samples)
    wall = sum(r["wall_s"] for r in rounds)
    return {
        "streams": len(samples),
        "errors": len(samples) - len(ok),
        "error_kinds": sorted({s.error for s in samples if s.error}),
        "tokens_per_stream": measure.quantiles([s.tokens for s in ok], scale=1),
        "ttft_ms": measure.quantiles([s.ttft_ms for s in ok if s.ttft_ms is not None], scale=1),
        "stream_tokens_per_s": measure.quantiles(
            [s.tokens_per_s for s in ok if s.tokens_per_s is not None], scale=1
        ),
        "aggregate_tokens_per_s": round(tokens / wall, 1) if wall else None,
    }


def cancel_stats(trials: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in trials if not t["error"]]
    stats: dict[str, Any] = {
        "trials": len(trials),
        "errors": len(trials) - len(ok),
        "error_kinds": sorted({t["error"] for t in trials if t["error"]}),
        "tokens_after": measure.quantiles([t["tokens_after"] for t in ok], scale=1),
        "busy_after_ms": measure.quantiles([t["busy_after_ms"] for t in ok], scale=1),
    }
    finals = [t["cancel_to_final_ms"] for t in ok if "cancel_to_final_ms" in t]
    if finals:
        stats["cancel_to_final_ms"] = measure.quantiles(finals, scale=1)
    return stats


def _q(stats: dict[str, Any], digits: int = 0) -> str:
    return f"{stats['p50']:.{digits}f} / {stats['p95']:.{digits}f}" if stats["n"] else "–"


def markdown(results: dict[str, Any]) -> str:
    config, machine = results["config"], results["machine"]
    lines = [
        "## echotune benchmark: local model",
        "",
        f"{results['model']} on llama.cpp ({results['server']}), max_tokens {config['tokens']}, "
        f"temperature 0; {machine['nproc']} CPUs ({machine['cpu_model']}), loadavg before "
        f"{machine['loadavg_before']}, after {machine['loadavg_after']}.",
        "A: client → llama.cpp server. "
        "B: client → gateway → Redis → worker → llama.cpp → … → client.",
        "",
        "| streams | arm | answers | errors | tokens each p50 | TTFT p50 / p95 ms | "
        "tokens/s of a stream p50 / p95 | aggregate tokens/s |",
        "|---:|---|---:|---:|---:|---|---|---:|",
    ]
    for level in results["levels"]:
        for arm in (A, B):
            s = level["arms"][arm]
            lines.append(
                f"| {level['level']} | {arm} | {s['streams']} | {s['errors']} | "
                f"{s['tokens_per_stream']['p50']} | {_q(s['ttft_ms'])} | "
                f"{_q(s['stream_tokens_per_s'], 1)} | {s['aggregate_tokens_per_s']} |"
            )
    lines += [
        "",
        "Cancel after 8 tokens (A: close the stream; B: POST cancel). *Tokens after*: CPU time the "
        "server spent after the cancel ÷ its CPU time per generated token "
        f"({results['cpu_ms_per_token']} ms, over a whole answer).",
        "",
        "| arm | trials | errors | tokens after p50 / p95 | server busy after ms p50 / p95 | "
        "cancel → `done` ms p50 / p95 |",
        "|---|---:|---:|---|---|---|",
    ]
    for arm in (A, B):
        c = results["cancel"][arm]
        final = _q(c["cancel_to_final_ms"], 1) if "cancel_to_final_ms" in c else "–"
        lines.append(
            f"| {arm} | {c['trials']} | {c['errors']} | {_q(c['tokens_after'], 2)} | "
            f"{_q(c['busy_after_ms'], 1)} | {final} |"
        )
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------


def stack_env(redis_url: str, llama_url: str, api_key: str, log_level: str) -> dict[str, str]:
    """One gateway and one worker as `make dev-local` configures them, limits out of the way."""
    huge = "1000000"
    return {
        "ECHOTUNE_REDIS_URL": redis_url,
        "ECHOTUNE_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}",
        "ECHOTUNE_PROVIDERS": json.dumps([local_model.provider(llama_url)]),
        "ECHOTUNE_DEFAULT_PROVIDER": local_model.PROVIDER,
        "ECHOTUNE_FALLBACKS": "[]",
        "ECHOTUNE_LOG_LEVEL": log_level,
        "ECHOTUNE_DEV_API_KEY": api_key,
        "ECHOTUNE_GATEWAY_SESSION_SECRET": secrets.token_urlsafe(16),
        "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_USER": huge,
        "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_IP": huge,
        "ECHOTUNE_GATEWAY_MAX_OPEN_STREAMS_PER_USER": huge,
        "ECHOTUNE_WORKER_CONCURRENCY": str(local_model.CONCURRENCY),
    }


async def drive(args: argparse.Namespace, target: Target, llama_pid: int) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as http:
        say("warm-up")
        for arm in (A, B):
            await run_round(http, target, arm, 1)
        for level in args.levels:
            for index in range(args.rounds):
                for arm in (A, B) if index % 2 == 0 else (B, A):
                    result = await run_round(http, target, arm, level)
                    rounds.append(result)
                    stats = arm_stats([result])
                    say(
                        f"level {level} {arm} round {index + 1}: TTFT p50 "
                        f"{stats['ttft_ms']['p50']} ms, {stats['aggregate_tokens_per_s']} tokens/s,"
                        f" errors {stats['errors']}"
                    )
        trials: list[dict[str, Any]] = []
        per_token = 0.0
        if args.trials:
            per_token = await cpu_per_token(http, target, llama_pid)
            say(f"cancel trials ({args.trials} per arm); {per_token / 1e6:.1f} ms CPU per token")
            for _ in range(args.trials):
                for arm in (A, B):
                    trials.append(await cancel_trial(http, target, arm, llama_pid, per_token))
    levels = [
        {
            "level": level,
            "arms": {
                arm: arm_stats([r for r in rounds if r["level"] == level and r["arm"] == arm])
                for arm in (A, B)
            },
        }
        for level in args.levels
    ]
    return {
        "levels": levels,
        "cpu_ms_per_token": round(per_token / 1e6, 2),
        "cancel": {arm: cancel_stats([t for t in trials if t["arm"] == arm]) for arm in (A, B)},
        "trials": trials,
    }


async def bench_local(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out or RESULTS / datetime.now().strftime("local-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before anything runs)
    load_before = measure.loadavg()
    api_key = f"et_bench{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"
    services: list[ServiceProcess] = []
    with local_redis() as redis_url:
        try:
            llama, llama_url = await local_model.start_server()
            services.append(llama)
            env = stack_env(redis_url, llama_url, api_key, args.log_level)
            gateway, gateway_url = await start_gateway(env)
            services.append(gateway)
            services.append(await start_worker(env))
            target = Target(llama_url, gateway_url, api_key, args.tokens)
            results = await drive(args, target, llama.pid)
        finally:
            for proc in reversed(services):
                await proc.stop()
    results["config"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
    } | {"out": str(out)}
    results["model"] = local_model.model_name()
    results["server"] = f"llama-cpp-python {metadata.version('llama-cpp-python')}"
    results["machine"] = {
        **measure.machine(),
        "loadavg_before": load_before,
        "loadavg_after": measure.loadavg(),
    }
    results["markdown"] = markdown(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json))
    (out / "results.md").write_text(results["markdown"])
    results["files"] = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    return results


def _json(value: Any) -> Any:
    return asdict(value) if isinstance(value, Sample) else str(value)


def say(text: str) -> None:
    print(f"[bench local {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

"""The short report of a chaos run: what ran, what was injected, each invariant's verdict."""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from typing import Any

from deploy.chaos.evidence import Evidence
from deploy.chaos.findings import INVARIANTS, Findings, final_of, label
from deploy.chaos.history import History
from deploy.chaos.plan import CLUSTER_FAULT_KINDS, FAULT_KINDS

SHOWN_PER_INVARIANT = 25


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counter.most_common()) or "none"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _kib(value: float) -> str:
    return f"{value / 1024:,.0f} KiB"


def summary(history: History, evidence: Evidence, findings: Findings) -> dict[str, Any]:
    plan = history.plan["requests"]
    primaries = [s for s in history.sessions if s.role == "primary"]
    attempts = [a for attempts in evidence.attempts.values() for a in attempts]
    latencies = findings.cancel_latencies_ms
    return {
        "seed": history.seed,
        "duration_s": history.duration_s,
        "requests": len(plan),
        "requests_by_kind": Counter(r["kind"] for r in plan),
        "sessions": len(history.sessions),
        "duplicates": len(history.sessions) - len(primaries),
        "with_cancel": sum(1 for r in plan if r["cancel"]),
        "with_disconnects": sum(1 for r in plan if r["disconnects"]),
        "resumes": sum(c.purpose == "resume" for s in history.sessions for c in s.connections),
        "outcomes": Counter(label(final_of(s)) for s in history.sessions),
        "attempts": len(attempts),
        "attempts_by_outcome": Counter(a["outcome"] for a in attempts),
        "reclaims": sum(r.what == "reclaimed" for rs in evidence.runs.values() for r in rs),
        "discarded": sum(
            e.type == "failover" and bool(e.data.get("discard_partial"))
            for s in primaries
            for e in s.events
        ),
        "breaker": Counter(f"{p} {a}->{b}" for _, p, a, b in evidence.breaker_trips),
        "faults": Counter(f.kind for f in history.faults),
        "cancel": {
            "n": len(latencies),
            "p50": quantile(latencies, 0.5),
            "p95": quantile(latencies, 0.95),
            "max": max(latencies) if latencies else None,
            "outcomes": findings.cancel_outcomes,
        },
        "telemetry_documents": len(history.telemetry),
        "violations": Counter(v.invariant for v in findings.violations),
    }


_KIND_ORDER = [*FAULT_KINDS, *(k for k in CLUSTER_FAULT_KINDS if k not in FAULT_KINDS)]
DURABILITY = (
    "  (Redis restarts keep every acknowledged write: AOF with appendfsync always, SIGTERM "
    "or kill -9; Redis losing data is a different fault and is not injected)"
)
CLUSTER_DURABILITY = (
    "  (Redis Cluster: 3 primaries with a replica each, asynchronous replication; a failover "
    "SIGKILLs a primary and its replica takes over: a write acknowledged within the "
    "replication lag before the kill could be lost - none is, when this run passes)"
)


def render(history: History, evidence: Evidence, findings: Findings) -> str:
    s = summary(history, evidence, findings)
    seed, duration = history.seed, history.duration_s
    cluster = history.redis.get("mode") == "cluster"
    kinds = sorted({f["kind"] for f in history.plan["faults"]}, key=_KIND_ORDER.index)
    replay = f"--seed {seed} --duration {duration:.0f}"
    if cluster:
        replay += f" --redis-cluster --faults {','.join(kinds)}"
    lines = [
        f"echotune chaos run: seed {seed}, {duration:.0f} s of traffic "
        f'(replay: make chaos ARGS="{replay}")',
        _machine(history.load),
        f"requests: {s['requests']} ({_counts(s['requests_by_kind'])}); sessions "
        f"{s['sessions']} ({s['duplicates']} duplicate starts); {s['with_cancel']} with a "
        f"cancel, {s['with_disconnects']} with disconnects ({s['resumes']} resumes)",
        f"outcomes: {_counts(s['outcomes'])}",
        f"upstream attempts: {s['attempts']} ({_counts(s['attempts_by_outcome'])}); reclaimed "
        f"jobs {s['reclaims']}; restarts with discard_partial {s['discarded']}; breaker: "
        f"{_counts(s['breaker'])}",
        "faults: " + ", ".join(f"{k} {s['faults'].get(k, 0)}" for k in kinds),
        CLUSTER_DURABILITY if cluster else DURABILITY,
    ]
    t0 = history.t0_ns
    lines += [
        f"  +{(f.t_ns - t0) / 1e9:6.1f}s {f.kind:<13} {f.target:<10} "
        f"back +{(f.t_up_ns - t0) / 1e9:.1f}s {f.note}".rstrip()
        for f in history.faults
    ]
    c = s["cancel"]
    lines.append(
        f"cancel (acknowledged -> `cancelled` received): n={c['n']} p50 {_ms(c['p50'])} ms, "
        f"p95 {_ms(c['p95'])} ms, max {_ms(c['max'])} ms; outcomes {c['outcomes']}"
    )
    lines += _redis_lines(history.redis)
    lines.append(f"telemetry documents: {s['telemetry_documents']}")
    lines.append("invariants:")
    for name, meaning in INVARIANTS.items():
        found = [v for v in findings.violations if v.invariant == name]
        excused = [e for e in findings.excused if e[0] == name]
        verdict = f"{len(found)} VIOLATIONS" if found else "ok"
        note = f" ({len(excused)} excused)" if excused else ""
        lines.append(f"  {name:<14} {verdict}{note}: {meaning}")
        for v in found[:SHOWN_PER_INVARIANT]:
            lines.append(f"    - {v.request_id or '-'}: {v.detail}")
            if v.hint:
                lines.append(f"        evidence: {v.hint}")
        if len(found) > SHOWN_PER_INVARIANT:
            lines.append(f"    … and {len(found) - SHOWN_PER_INVARIANT} more (violations.json)")
    reasons = Counter(f"{e[0]}: {_reason(e[2])}" for e in findings.excused)
    if reasons:
        lines.append("excused (allowed by the design, not violations):")
        lines += [f"  {n} × {why}" for why, n in reasons.most_common()]
    total = len(findings.violations)
    lines.append(
        f"RESULT: {total} violation{'s' * (total != 1)} (seed {seed})"
        if total
        else f"RESULT: no violation (seed {seed})"
    )
    return "\n".join(lines)


def _reason(text: str) -> str:
    """An excuse without its specifics (process names, numbers), to count alike ones."""
    return re.sub(r"(worker\d+#\d+|\d+(\.\d+)?)", "…", text)


def _redis_lines(audit: dict[str, Any]) -> list[str]:
    if "end" not in audit:
        return ["redis: no audit"]
    base, end = audit["baseline"], audit["end"]
    families: Counter[str] = Counter(i["family"] for i in end["keys"].values())
    waited = "after the TTLs" if end.get("waited_for_ttls") else "TTL wait cut short"
    left = sum(i["bytes"] for i in end["keys"].values())
    left -= sum(i["bytes"] for i in base["keys"].values())
    return [
        f"redis ({waited}, {end['t'] - audit['t_drained']:.0f} s after the drain): keys "
        f"{len(base['keys'])} -> {len(end['keys'])} ({_counts(families)}); used_memory "
        f"{_kib(base['used_memory'])} -> {_kib(end['used_memory'])}, dataset "
        f"{_kib(base['used_memory_dataset'])} -> {_kib(end['used_memory_dataset'])}; the "
        f"keys left hold {_kib(left)} more than before (MEMORY USAGE)",
        "  no TTL: "
        + (
            ", ".join(f"{k} ({i['family']})" for k, i in end["keys"].items() if i["ttl_ms"] == -1)
            or "none"
        ),
        _stalls_line(audit.get("stalls")),
    ]


def _stalls_line(stalls: list[tuple[float, int]] | None) -> str:
    if stalls is None:
        return "  stalls: not recorded (Redis' latency monitor is on for a single Redis only)"
    if not stalls:
        return "  stalls: Redis' main thread was never blocked 100 ms or more"
    seconds = {int(at) for at, _ in stalls}
    worst = max(ms for _, ms in stalls)
    return (
        f"  stalls: Redis' main thread was blocked 100 ms or more in {len(seconds)} seconds "
        f"(worst {worst} ms)"
    )


def _machine(load: dict[str, Any]) -> str:
    def avg(key: str) -> str:
        return "/".join(f"{x:.1f}" for x in load.get(key, ()))

    settings = " ".join(
        f"{k.removeprefix('ECHOTUNE_')}={v}" for k, v in load.get("tuning", {}).items()
    )
    return (
        f"machine: {os.cpu_count()} cores, loadavg {avg('loadavg_before')} before, "
        f"{avg('loadavg_after_traffic')} after the traffic; stack started in "
        f"{load.get('stack_start_s')} s, drained {load.get('drain_s')} s after the traffic\n"
        f"settings: {settings}"
    )

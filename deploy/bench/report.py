"""Aggregates the rounds into per-level figures; writes the JSON, the Markdown and the plot.

Definitions (all times in ms unless named otherwise):

* TTFT: request start (before connect) → first token received by the client.
* per-token delay: client receipt − the producer's stamp in the token (exact: one clock).
* added TTFT / added inter-token latency: quantile by quantile B − A of TTFT / per-token delay.
* inter-token gap: time between two consecutive tokens at the client (reported, not a target).
* duration ratio: median stream duration (start → final event) B / A.
* CPU ms per 1,000 tokens: utime+stime of the process during the arm's rounds / tokens received.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from deploy.bench import measure, redis_nodes, timeline
from deploy.bench.client import A, B, Stream

SERVICE_ORDER = ("gateway", "worker", "redis", "fake-llm", "client", "bench")


def _arm_stats(rounds: list[dict[str, Any]], nominal_tokens: int) -> dict[str, Any]:
    streams: list[Stream] = [s for r in rounds for s in r["streams"]]
    ok = [s for s in streams if not s.error]
    errors = collections.Counter(s.error for s in streams if s.error)
    short = sum(1 for s in ok if s.tokens != nominal_tokens)
    if short:
        errors["wrong_token_count"] += short
    tokens = sum(s.tokens for s in streams)
    cpu: dict[str, float] = collections.defaultdict(float)
    for r in rounds:
        for name, seconds in r["cpu_s"].items():
            cpu[name] += seconds
    wall = sum(r["wall_s"] for r in rounds)
    delays = [d for s in ok for d in s.delays]
    legs = [x for s in ok for x in s.legs]
    relay = [
        d - x
        for s in ok
        if len(s.legs) == len(s.delays)
        for d, x in zip(s.delays, s.legs, strict=True)
    ]
    lag = [x for r in rounds for x in r["lag_ns"]]
    per_1k = {
        name: round(1e6 * sec / tokens, 2) if tokens else None for name, sec in sorted(cpu.items())
    }
    grouped: dict[str, float] = collections.defaultdict(float)
    for name, sec in cpu.items():
        grouped[next((g for g in SERVICE_ORDER if name.startswith(g)), name)] += sec
    return {
        "streams": len(streams),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "anomalies": sum(s.anomalies for s in streams),
        "tokens": tokens,
        "ttft_ms": measure.quantiles(
            [s.first_token_ns - s.start_ns for s in ok if s.first_token_ns]
        ),
        "first_event_ms": measure.quantiles(
            [s.first_event_ns - s.start_ns for s in ok if s.first_event_ns]
        ),
        "to_upstream_ms": measure.quantiles([x for r in rounds for x in r["to_upstream_ns"]]),
        "upstream_pace_ms": measure.quantiles([x for r in rounds for x in r["upstream_pace_ns"]]),
        "token_delay_ms": measure.quantiles(delays),
        "gap_ms": measure.quantiles([g for s in ok for g in s.gaps]),
        "duration_ms": measure.quantiles([s.end_ns - s.start_ns for s in ok]),
        "upstream_leg_ms": measure.quantiles(legs),
        "relay_leg_ms": measure.quantiles(relay),
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "cpu_ms_per_1k_tokens": per_1k,
        "cpu_ms_per_1k_tokens_grouped": {
            g: round(1e6 * grouped[g] / tokens, 2) if tokens else None
            for g in SERVICE_ORDER
            if g in grouped
        },
        "cpu_s": {name: round(sec, 3) for name, sec in sorted(cpu.items())},
        "peak_open": max(r["peak_open"] for r in rounds),
        "client_util_max": max(r["client_util_max"] for r in rounds),
        "client_loop_lag_ms": measure.quantiles(lag),
        "machine_busy_pct": round(max(r["machine_busy_pct"] for r in rounds), 1),
        "foreign_cpu_pct": round(max(r["machine_busy_pct"] - r["ours_pct"] for r in rounds), 1),
        "gateway_rss_growth_kib": max(r["rss_max_kib"] - r["rss_before_kib"] for r in rounds),
        "rounds": len(rounds),
        "_samples": {  # for the plot; dropped from the JSON
            "delay": delays,
            "ttft": [s.first_token_ns - s.start_ns for s in ok if s.first_token_ns],
        },
    }


def aggregate(
    rounds: list[dict[str, Any]],
    cancels: list[dict[str, Any]],
    resumes: list[dict[str, Any]],
    profiles: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    levels = []
    for level in sorted({r["level"] for r in rounds}):
        arms = {
            arm: _arm_stats(
                [r for r in rounds if r["level"] == level and r["arm"] == arm], config["tokens"]
            )
            for arm in (A, B)
        }
        a, b = arms[A], arms[B]
        dur_a, dur_b = a["duration_ms"]["p50"], b["duration_ms"]["p50"]
        client_sat = max(a["client_util_max"], b["client_util_max"]) >= 0.9
        levels.append(
            {
                "level": level,
                "arms": arms,
                "added_ttft_ms": measure.difference(b["ttft_ms"], a["ttft_ms"]),
                "added_to_upstream_ms": measure.difference(
                    b["to_upstream_ms"], a["to_upstream_ms"]
                ),
                "added_itl_ms": measure.difference(b["token_delay_ms"], a["token_delay_ms"]),
                "added_gap_ms": measure.difference(b["gap_ms"], a["gap_ms"]),
                "duration_ratio": round(dur_b / dur_a, 4) if dur_a and dur_b else None,
                "errors": {A: a["errors"], B: b["errors"]},
                "tokens_per_s": {A: a["tokens_per_s"], B: b["tokens_per_s"]},
                "cpu_ms_per_1k_tokens": {
                    A: a["cpu_ms_per_1k_tokens"],
                    B: b["cpu_ms_per_1k_tokens"],
                },
                "gateway_cpu_us_per_token": b["cpu_ms_per_1k_tokens"].get("gateway"),
                "gateway_rss_kib_per_stream": round(b["gateway_rss_growth_kib"] / b["peak_open"], 1)
                if b["peak_open"]
                else None,
                "client_saturated": client_sat,
                "machine_saturated": max(a["machine_busy_pct"], b["machine_busy_pct"]) >= 90,
                "redis_nodes": redis_nodes.aggregate(
                    [r for r in rounds if r["level"] == level and r["arm"] == B],
                    b["tokens"],
                    b["streams"],
                ),
            }
        )
    results: dict[str, Any] = {
        "config": config,
        "levels": levels,
        "cancel": _cancel_stats(cancels),
        "resume": _resume_stats(resumes),
        "profiles": profiles,
        "telemetry_lag": None,  # optional in the issue; not measured
    }
    results["targets"] = targets(results)
    return results


def _cancel_stats(trials: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in (A, B):
        mine = [t for t in trials if t["arm"] == arm]
        good = [t for t in mine if not t.get("error")]
        out[arm] = {
            "trials": len(mine),
            "errors": len(mine) - len(good),
            "error_kinds": dict(collections.Counter(t["error"] for t in mine if t.get("error"))),
            "upstream_close_ms": measure.quantiles([t["upstream_close_ns"] for t in good]),
        }
        out[f"_{arm}"] = [t["upstream_close_ns"] for t in good]
        out[arm]["failed"] = [t for t in mine if t.get("error")][:5]
    good_b = [t for t in trials if t["arm"] == B and not t.get("error") and t.get("final_ns")]
    out[B]["client_done_ms"] = measure.quantiles([t["final_ns"] - t["cancel_ns"] for t in good_b])
    out["added_ms"] = measure.difference(out[B]["upstream_close_ms"], out[A]["upstream_close_ms"])
    return out


def _resume_stats(trials: list[dict[str, Any]]) -> dict[str, Any]:
    good = [t for t in trials if not t.get("error")]
    return {
        "trials": len(trials),
        "errors": len(trials) - len(good),
        "error_kinds": dict(collections.Counter(t["error"] for t in trials if t.get("error"))),
        "latency_ms": measure.quantiles([t["latency_ns"] for t in good]),
        "replayed_fraction": round(sum(t["replayed"] for t in good) / len(good), 3)
        if good
        else None,
        "_samples": [t["latency_ns"] for t in good],
    }


def _level(results: dict[str, Any], level: int) -> dict[str, Any] | None:
    return next((x for x in results["levels"] if x["level"] == level), None)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each met, missed or not measured (level absent)."""
    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, *, at_least: bool = False) -> None:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        out.append({"target": name, "limit": limit, "value": value, "met": met})

    def at(level: int, metric: str, quantile: str) -> float | None:
        found = _level(results, level)
        return None if found is None else found[metric][quantile]

    def cpu(level: int, parts: tuple[str, ...]) -> float | None:
        found = _level(results, level)
        if found is None:
            return None
        grouped = found["arms"][B]["cpu_ms_per_1k_tokens_grouped"]
        values = [grouped.get(part) for part in parts]
        return None if None in values else sum(values)

    # issue 13 (1 stream) and issue 15 (100 and 500 streams)
    check("added TTFT p50 at 1 stream (ms)", at(1, "added_ttft_ms", "p50"), 3)
    check("added TTFT p95 at 100 streams (ms)", at(100, "added_ttft_ms", "p95"), 15)
    check("added inter-token p99 at 100 streams (ms)", at(100, "added_itl_ms", "p99"), 10)
    for lv in results["levels"]:
        limit = {100: 1.05, 500: 1.3}.get(lv["level"], 1.02)
        check(f"duration ratio B/A at {lv['level']} streams", lv["duration_ratio"], limit)
    check("gateway CPU per relayed token at 100 streams (µs)", cpu(100, ("gateway",)), 80)
    check("workers CPU per relayed token at 100 streams (µs)", cpu(100, ("worker",)), 150)
    path = cpu(100, ("gateway", "worker", "redis"))
    check("path CPU per relayed token at 100 streams (µs)", path, 280)
    clean = [
        lv["arms"][B]["peak_open"]
        for lv in results["levels"]
        if lv["errors"][B] == 0 and lv["errors"][A] == 0
    ]
    check("concurrent streams with zero errors", max(clean) if clean else 0, 500, at_least=True)
    check("cancel → upstream close p95 (ms)", results["cancel"][B]["upstream_close_ms"]["p95"], 50)
    check("resume p95 (ms)", results["resume"]["latency_ms"]["p95"], 20)
    return out


# --- profiles ---------------------------------------------------------------------------------


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Top self and inclusive frames of a py-spy raw (collapsed stacks) file."""
    if not path.exists():
        return {"error": "no profile written"}
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        total += count
        if frames:
            self_counts[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            incl_counts[frame] += count

    def pct(c: collections.Counter[str]) -> list[list[Any]]:
        return (
            [[frame, round(100 * n / total, 1)] for frame, n in c.most_common(top)] if total else []
        )

    # the frames every sample shares (interpreter start-up, CLI, event loop) say nothing
    root = max(incl_counts.values(), default=0)
    inner = collections.Counter({f: n for f, n in incl_counts.items() if n < 0.9 * root})
    return {"samples": total, "self_pct": pct(self_counts), "inclusive_pct": pct(inner)}


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` → ``func (module.py)``; lines merged."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = file.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})"


# --- output -----------------------------------------------------------------------------------


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _tracing(results: dict[str, Any]) -> str:
    traced = results.get("tracing")
    if traced is None:
        return "Tracing off."
    return f"Tracing on: {traced['spans']} spans exported in {traced['requests']} OTLP requests."


def markdown(results: dict[str, Any]) -> str:
    cfg, m = results["config"], results["machine"]
    lines = [
        f"## echotune benchmark — {cfg['tokens']} tokens, TTFT {cfg['ttft_ms']:g} ms, "
        f"pace {cfg['pace_ms']:g} ms, {cfg['workers']} worker(s), "
        f"{cfg['clients']} client process(es), "
        f"{cfg['rounds']} round(s) per arm",
        "",
        f"Machine: {m['nproc']} CPU ({m['cpu_model']}), {m['mem_gib']} GiB, kernel {m['kernel']}; "
        f"loadavg before `{m['loadavg_before']}`, after `{m['loadavg_after']}`; "
        f"run took {results['elapsed_s']} s. {_tracing(results)}",
        "",
        "A = client → fake upstream; B = client → gateway → Redis → worker → upstream → worker → "
        "Redis → gateway → client. Added = B − A per quantile. "
        "Per-token delay = client receipt − producer stamp.",
        "",
        "### Latency (ms)",
        "",
        "| streams | TTFT p50 A / B | added TTFT p50 / p95 / p99 | token delay p50 A / B | "
        "added inter-token p50 / p95 / p99 | gap p99 A / B | duration B/A | errors A / B |",
        "|---:|---|---|---|---|---|---:|---|",
    ]
    for lv in results["levels"]:
        a, b = lv["arms"][A], lv["arms"][B]
        at, it = lv["added_ttft_ms"], lv["added_itl_ms"]
        lines.append(
            f"| {lv['level']} | {_f(a['ttft_ms']['p50'])} / {_f(b['ttft_ms']['p50'])} "
            f"| {_f(at['p50'])} / {_f(at['p95'])} / {_f(at['p99'])} "
            f"| {_f(a['token_delay_ms']['p50'], 3)} / {_f(b['token_delay_ms']['p50'], 3)} "
            f"| {_f(it['p50'], 3)} / {_f(it['p95'], 3)} / {_f(it['p99'], 3)} "
            f"| {_f(a['gap_ms']['p99'])} / {_f(b['gap_ms']['p99'])} "
            f"| {_f(lv['duration_ratio'], 4)} | {a['errors']} / {b['errors']} |"
        )
    lines += [
        "",
        "### Where B's per-token delay goes (ms): upstream leg = fake stamp → worker XADD stamp; "
        "relay leg = worker stamp → client; upstream's pace = the fake's time per token, first "
        "to last (nominal: the pace asked; longer when its process waited for a CPU)",
        "",
        "| streams | upstream leg p50 / p99 | relay leg p50 / p95 / p99 "
        "| B first event (start) p50 / p99 "
        "| request reaches upstream p50 A / B | added before upstream p50 / p95 "
        "| upstream's pace p50 A / B |",
        "|---:|---|---|---|---|---|---|",
    ]
    for lv in results["levels"]:
        a, b = lv["arms"][A], lv["arms"][B]
        up, rl, fe = b["upstream_leg_ms"], b["relay_leg_ms"], b["first_event_ms"]
        added = lv["added_to_upstream_ms"]
        lines.append(
            f"| {lv['level']} | {_f(up['p50'], 3)} / {_f(up['p99'], 3)} "
            f"| {_f(rl['p50'], 3)} / {_f(rl['p95'], 3)} / {_f(rl['p99'], 3)} "
            f"| {_f(fe['p50'])} / {_f(fe['p99'])} "
            f"| {_f(a['to_upstream_ms']['p50'])} / {_f(b['to_upstream_ms']['p50'])} "
            f"| {_f(added['p50'])} / {_f(added['p95'])} "
            f"| {_f(a['upstream_pace_ms']['p50'], 2)} / {_f(b['upstream_pace_ms']['p50'], 2)} |"
        )
    lines += [
        "",
        "### Throughput and resources (CPU ms per 1,000 tokens = µs per token)",
        "",
        "CPU per token includes each stream's start and end; machine busy and others' CPU are "
        "% of all cores (others = busy − this benchmark's processes); client loop lag in ms.",
        "",
        "| streams | peak open A / B | tokens/s A / B | B: gateway | B: workers | B: redis "
        "| B: fake | B: clients | A: fake | A: clients | gateway RSS KiB/stream "
        "| client CPU max (cores) A / B | "
        "client loop lag p99 A / B | machine busy % A / B | others' CPU % A / B |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for lv in results["levels"]:
        a, b = lv["arms"][A], lv["arms"][B]
        ga, gb = a["cpu_ms_per_1k_tokens_grouped"], b["cpu_ms_per_1k_tokens_grouped"]
        sat = " ⚠ client saturated" if lv["client_saturated"] else ""
        lines.append(
            f"| {lv['level']} | {a['peak_open']} / {b['peak_open']} "
            f"| {_f(a['tokens_per_s'], 0)} / {_f(b['tokens_per_s'], 0)} "
            f"| {_f(gb.get('gateway'), 1)} | {_f(gb.get('worker'), 1)} | {_f(gb.get('redis'), 1)} "
            f"| {_f(gb.get('fake-llm'), 1)} | {_f(gb.get('client'), 1)} "
            f"| {_f(ga.get('fake-llm'), 1)} "
            f"| {_f(ga.get('client'), 1)} | {_f(lv['gateway_rss_kib_per_stream'], 1)} "
            f"| {_f(a['client_util_max'])} / {_f(b['client_util_max'])}{sat} "
            f"| {_f(a['client_loop_lag_ms']['p99'])} / {_f(b['client_loop_lag_ms']['p99'])} "
            f"| {_f(a['machine_busy_pct'], 0)} / {_f(b['machine_busy_pct'], 0)} "
            f"| {_f(a['foreign_cpu_pct'], 0)} / {_f(b['foreign_cpu_pct'], 0)} |"
        )
    c, r = results["cancel"], results["resume"]
    lines += [
        "",
        "### Cancel and resume (ms)",
        "",
        "| measure | p50 | p95 | p99 | n | errors |",
        "|---|---:|---:|---:|---:|---:|",
        f"| A: client closes → upstream sees close | {_f(c[A]['upstream_close_ms']['p50'])} "
        f"| {_f(c[A]['upstream_close_ms']['p95'])} | {_f(c[A]['upstream_close_ms']['p99'])} "
        f"| {c[A]['upstream_close_ms']['n']} | {c[A]['errors']} |",
        f"| B: POST cancel → upstream closed | {_f(c[B]['upstream_close_ms']['p50'])} "
        f"| {_f(c[B]['upstream_close_ms']['p95'])} | {_f(c[B]['upstream_close_ms']['p99'])} "
        f"| {c[B]['upstream_close_ms']['n']} | {c[B]['errors']} |",
        f"| B: POST cancel → `done: cancelled` at client | {_f(c[B]['client_done_ms']['p50'])} "
        f"| {_f(c[B]['client_done_ms']['p95'])} | {_f(c[B]['client_done_ms']['p99'])} "
        f"| {c[B]['client_done_ms']['n']} | – |",
        "| B: resume (reconnect with Last-Event-ID → first replayed event) "
        f"| {_f(r['latency_ms']['p50'])} "
        f"| {_f(r['latency_ms']['p95'])} | {_f(r['latency_ms']['p99'])} | {r['latency_ms']['n']} "
        f"| {r['errors']} |",
        "",
        "### Targets",
        "",
        "| target | limit | value | met |",
        "|---|---:|---:|---|",
    ]
    for t in results["targets"]:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['limit']} | {_f(t['value'])} | {met} |")
    errors = {
        lv["level"]: {
            arm: lv["arms"][arm]["error_kinds"] for arm in (A, B) if lv["arms"][arm]["error_kinds"]
        }
        for lv in results["levels"]
    }
    errors = {k: v for k, v in errors.items() if v}
    if errors:
        lines += ["", f"Errors by kind: `{json.dumps(errors)}`"]
    if per_node := redis_nodes.markdown(results["levels"]):
        lines += ["", per_node]
    if first_token := timeline.markdown(results.get("timeline")):
        lines += ["", first_token]
    for name, prof in (results.get("profiles") or {}).items():
        if "self_pct" not in prof:
            continue
        lines += [
            "",
            f"### Profile of {name} at {cfg['profile_level']} streams "
            f"(py-spy, {prof['samples']} samples)",
            "",
            "| self % | frame | | inclusive % | frame |",
            "|---:|---|---|---:|---|",
        ]
        pairs = zip(prof["self_pct"][:12], prof["inclusive_pct"][:12], strict=False)
        for (sf, sp), (inf, ip) in pairs:
            lines.append(f"| {sp} | `{sf}` | | {ip} | `{inf}` |")
    return "\n".join(lines)


def plot_latency(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, lv in enumerate(results["levels"]):
        color = colors[i % len(colors)]
        for arm, style in ((A, "--"), (B, "-")):
            samples = lv["arms"][arm]["_samples"]
            for ax, key in ((axes[0], "delay"), (axes[1], "ttft")):
                values = np.sort(np.asarray(samples[key], dtype=float) / 1e6)
                if len(values):
                    ax.plot(
                        values,
                        np.linspace(0, 1, len(values)),
                        style,
                        color=color,
                        label=f"{arm} {lv['level']} streams",
                    )
    axes[0].set(
        xscale="log",
        xlabel="per-token delay: producer stamp → client (ms)",
        ylabel="CDF",
        title="Per-token delay (A dashed, B solid)",
    )
    axes[1].set(xscale="log", xlabel="TTFT (ms)", ylabel="CDF", title="Time to first token")
    c, r = results["cancel"], results["resume"]
    for label, values in (
        ("cancel→upstream close A", c.get("_A")),
        ("cancel→upstream close B", c.get("_B")),
        ("resume B", r.get("_samples")),
    ):
        if values:
            v = np.sort(np.asarray(values, dtype=float) / 1e6)
            axes[2].plot(v, np.linspace(0, 1, len(v)), label=label)
    axes[2].set(xscale="log", xlabel="ms", ylabel="CDF", title="Cancel and resume")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out: Path, *, plot: bool = True) -> dict[str, Any]:
    results["markdown"] = markdown(results)
    files = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    if plot:
        files["plot"] = str(out / "latency.png")
        plot_latency(results, Path(files["plot"]))
    results["files"] = files
    (out / "results.md").write_text(results["markdown"] + "\n")
    (out / "results.json").write_text(json.dumps(_strip(results), indent=2) + "\n")
    return results


def _strip(value: Any) -> Any:
    """Without the raw samples (keys starting with ``_``)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value

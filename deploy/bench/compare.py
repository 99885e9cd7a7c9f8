"""Two benchmark results side by side: ``python -m deploy.bench --compare OLD.json NEW.json``.

For every level both runs measured: added latency (B − A), duration ratio, errors, tokens/s
and CPU per relayed token of the gateway, the workers and Redis, before → after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy.bench.client import B

ROWS: list[tuple[str, str]] = [
    ("added TTFT p50 (ms)", "added_ttft_ms.p50"),
    ("added TTFT p95 (ms)", "added_ttft_ms.p95"),
    ("added inter-token p50 (ms)", "added_itl_ms.p50"),
    ("added inter-token p99 (ms)", "added_itl_ms.p99"),
    ("duration ratio B/A", "duration_ratio"),
    ("errors B", f"errors.{B}"),
    ("tokens/s B", f"tokens_per_s.{B}"),
    ("gateway CPU µs/token", "cpu.gateway"),
    ("workers CPU µs/token", "cpu.worker"),
    ("Redis CPU µs/token", "cpu.redis"),
    ("path CPU µs/token (gateway+workers+Redis)", "cpu.path"),
]


def _value(level: dict[str, Any], path: str) -> float | None:
    if path.startswith("cpu."):
        grouped = level["arms"][B]["cpu_ms_per_1k_tokens_grouped"]
        parts = ("gateway", "worker", "redis") if path == "cpu.path" else (path[4:],)
        values = [grouped.get(p) for p in parts]
        return None if any(v is None for v in values) else round(sum(values), 1)  # type: ignore[arg-type]
    value: Any = level
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}".rstrip("0").rstrip(".")


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The Markdown table of ``old`` → ``new`` for every level both measured."""
    before = {lv["level"]: lv for lv in old["levels"]}
    after = {lv["level"]: lv for lv in new["levels"]}
    lines = []
    for level in sorted(before.keys() & after.keys()):
        lines += [f"### {level} streams", "", "| measure | before | after |", "|---|---:|---:|"]
        for name, path in ROWS:
            b, a = _value(before[level], path), _value(after[level], path)
            lines.append(f"| {name} | {_cell(b)} | {_cell(a)} |")
        lines.append("")
    return "\n".join(lines) or "no level measured by both runs"


def main(old_path: Path, new_path: Path) -> None:
    old, new = (json.loads(p.read_text()) for p in (old_path, new_path))
    print(compare(old, new))

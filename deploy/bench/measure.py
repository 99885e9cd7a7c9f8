"""Process and machine figures from /proc, and percentiles."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def machine() -> dict[str, object]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
    }


def quantiles(values: Sequence[float], scale: float = 1e-6) -> dict[str, float | int | None]:
    """p50/p95/p99/max (and n) of ``values`` times ``scale`` (default: ns → ms)."""
    if len(values) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    array = np.asarray(values, dtype=np.float64) * scale
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(array.max()), 3),
        "n": len(values),
    }


def difference(
    b: dict[str, float | int | None], a: dict[str, float | int | None]
) -> dict[str, float | None]:
    """Quantile by quantile ``b − a`` (the samples are not paired)."""
    out: dict[str, float | None] = {}
    for key in ("p50", "p95", "p99"):
        x, y = b.get(key), a.get(key)
        out[key] = None if x is None or y is None else round(float(x) - float(y), 3)
    return out

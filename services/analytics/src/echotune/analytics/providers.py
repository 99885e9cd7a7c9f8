"""Provider analytics from the per-minute rollups: summary per provider and model, time series.

Never scans raw attempts: counts and sums come from one ``$group`` over the rollups of the
range, histograms (and errors by code) from a second aggregation that unwinds the sparse
histogram maps and sums them per bucket. Percentiles are read from the summed histograms
(``echotune.common.histogram.quantile``), so they are within ≈4.4 % of the exact value.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.errors import bad_parameter
from echotune.analytics.params import Page, TimeRange
from echotune.common.histogram import quantile
from echotune.common.mongo import PROVIDER_ROLLUPS
from echotune.common.request_faults import REQUEST_FAULT_CODES
from echotune.common.stop_reasons import STOPPED

Document = dict[str, Any]
GroupKey = tuple[Any, ...]
PROVIDER_FIELDS = (
    "requests", "successes", "success_rate", "errors", "latency_ms", "ttft_ms",
    "tokens_in", "tokens_out", "tokens_per_s",
)  # fmt: skip
SERIES_METRICS = ("count", "success_rate", "p50", "p95", "ttft_p95")
BUCKETS = {"1m": ("minute", 1), "5m": ("minute", 5), "1h": ("hour", 1), "1d": ("day", 1)}
BUCKET_SECONDS = {"1m": 60, "5m": 300, "1h": 3_600, "1d": 86_400}
SCALARS = ("count", "successes", "latencyMsSum", "ttftMsSum", "ttftCount", "tokensIn", "tokensOut")
LATENCY, TTFT, ERRORS = "latencyHist", "ttftHist", "errors"
NOT_THE_PROVIDERS = STOPPED | REQUEST_FAULT_CODES
"""Calls that say nothing of the provider: left out of its success rate."""


@dataclass
class Sums:
    """Summed rollups of one group: scalar fields, histograms and errors by code."""

    scalars: dict[str, float] = field(default_factory=dict)
    hists: dict[str, dict[int, int]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, other: Sums) -> None:
        """Add another group's sums to this one."""
        for name, value in other.scalars.items():
            self.scalars[name] = self.scalars.get(name, 0) + value
        for name, hist in other.hists.items():
            mine = self.hists.setdefault(name, {})
            for index, count in hist.items():
                mine[index] = mine.get(index, 0) + count
        for code, count in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + count


def minute_floor(moment: datetime) -> datetime:
    """The start of the UTC minute holding ``moment``."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def rollup_match(rng: TimeRange, providers: Sequence[str], models: Sequence[str]) -> list[Document]:
    """``$match`` stages for the rollups of the range (whole minutes) and filters.

    The filters come as a second ``$match``: MongoDB merges the two and plans with every
    index (``provider_model_minute`` or ``minute_ttl``); the SecantusDB test server, whose
    planner scans the whole collection for ``provider`` + ``minute``, uses ``minute_ttl``.
    """
    stages: list[Document] = [
        {"$match": {"minute": {"$gte": minute_floor(rng.start), "$lt": rng.end}}}
    ]
    filters: Document = {}
    if providers:
        filters["provider"] = {"$in": list(providers)}
    if models:
        filters["model"] = {"$in": list(models)}
    return [*stages, {"$match": filters}] if filters else stages


def scalar_pipeline(match: list[Document], key: Document) -> list[Document]:
    """Sum the scalar fields of the matching rollups per group."""
    sums = {name: {"$sum": f"${name}"} for name in SCALARS}
    return [*match, {"$group": {"_id": key, **sums}}]


def _entries(name: str) -> Document:
    pairs = {"$objectToArray": {"$ifNull": [f"${name}", {}]}}
    return {"$map": {"input": pairs, "in": {"m": name, "k": "$$this.k", "v": "$$this.v"}}}


def histogram_pipeline(
    match: list[Document], key: Document, parts: Sequence[str]
) -> list[Document]:
    """Sum the sparse maps ``parts`` (histograms, errors) of the matching rollups per group."""
    entries = {"$concatArrays": [_entries(name) for name in parts]}
    return [
        *match,
        {"$project": {"_id": 0, "g": key, "e": entries}},
        {"$unwind": "$e"},
        {"$group": {"_id": {"g": "$g", "m": "$e.m", "k": "$e.k"}, "n": {"$sum": "$e.v"}}},
    ]


def _group(key: Document, value: Document) -> GroupKey:
    return tuple(value.get(name) for name in key)


async def collect(
    db: AsyncDatabase[Document],
    match: list[Document],
    key: Document,
    parts: Sequence[str],
    max_time_ms: int,
) -> dict[GroupKey, Sums]:
    """Run the scalar and (when ``parts``) histogram aggregations; the sums per group."""
    rollups = db[PROVIDER_ROLLUPS]

    async def run(pipeline: list[Document]) -> list[Document]:
        cursor = await rollups.aggregate(pipeline, maxTimeMS=max_time_ms)
        return await cursor.to_list()

    jobs = [run(scalar_pipeline(match, key))]
    if parts:
        jobs.append(run(histogram_pipeline(match, key, parts)))
    results = await asyncio.gather(*jobs)
    groups: dict[GroupKey, Sums] = {}
    for doc in results[0]:
        sums = groups.setdefault(_group(key, doc["_id"]), Sums())
        sums.scalars = {name: doc.get(name) or 0 for name in SCALARS}
    for doc in results[1] if parts else []:
        ident = doc["_id"]
        sums = groups.setdefault(_group(key, ident["g"]), Sums())
        if ident["m"] == ERRORS:
            sums.errors[ident["k"]] = sums.errors.get(ident["k"], 0) + int(doc["n"])
        else:
            hist = sums.hists.setdefault(ident["m"], {})
            hist[int(ident["k"])] = hist.get(int(ident["k"]), 0) + int(doc["n"])
    return groups


def _ratio(part: float, whole: float, digits: int = 6) -> float | None:
    return round(part / whole, digits) if whole else None


def _success_rate(sums: Sums) -> float | None:
    """Successes of the calls that say something of the provider (a Stop or a 400 does not)."""
    left_out = sum(n for code, n in sums.errors.items() if code in NOT_THE_PROVIDERS)
    return _ratio(sums.scalars.get("successes", 0), sums.scalars.get("count", 0) - left_out)


def _q(hist: dict[int, int] | None, q: float) -> float | None:
    value = quantile(hist or {}, q)
    return None if value is None else round(value, 3)


def parts_for(fields: Sequence[str]) -> list[str]:
    """The sparse maps needed for ``fields``."""
    wanted = {"latency_ms": LATENCY, "ttft_ms": TTFT, "errors": ERRORS, "success_rate": ERRORS}
    return list(dict.fromkeys(part for name, part in wanted.items() if name in fields))


def stats(sums: Sums, fields: Sequence[str]) -> Document:
    """The figures of ``fields`` from summed rollups."""
    s = sums.scalars
    count, latency_sum = s.get("count", 0), s.get("latencyMsSum", 0)
    ttft_count = s.get("ttftCount", 0)
    full: dict[str, Any] = {
        "requests": lambda: int(count),
        "successes": lambda: int(s.get("successes", 0)),
        "success_rate": lambda: _success_rate(sums),
        "errors": lambda: dict(sorted(sums.errors.items())),
        "latency_ms": lambda: {
            "avg": _ratio(latency_sum, count, 3),
            **{f"p{round(q * 100)}": _q(sums.hists.get(LATENCY), q) for q in (0.5, 0.95, 0.99)},
        },
        "ttft_ms": lambda: {
            "count": int(ttft_count),
            "avg": _ratio(s.get("ttftMsSum", 0), ttft_count, 3),
            **{f"p{round(q * 100)}": _q(sums.hists.get(TTFT), q) for q in (0.5, 0.95)},
        },
        "tokens_in": lambda: int(s.get("tokensIn", 0)),
        "tokens_out": lambda: int(s.get("tokensOut", 0)),
        "tokens_per_s": lambda: _ratio(s.get("tokensOut", 0) * 1000, latency_sum, 3),
    }
    return {name: full[name]() for name in fields}


async def provider_summary(
    db: AsyncDatabase[Document],
    rng: TimeRange,
    providers: Sequence[str],
    models: Sequence[str],
    fields: Sequence[str],
    page: Page,
    max_time_ms: int,
) -> tuple[Document, int]:
    """Per provider and model (most requests first, paginated) and the totals of all."""
    key = {"provider": "$provider", "model": "$model"}
    match = rollup_match(rng, providers, models)
    groups = await collect(db, match, key, parts_for(fields), max_time_ms)
    ordered = sorted(groups.items(), key=lambda item: (-item[1].scalars.get("count", 0), item[0]))
    total = Sums()
    for _, sums in ordered:
        total.add(sums)
    rows = [
        {"provider": group[0], "model": group[1], **stats(sums, fields)}
        for group, sums in ordered[page.skip : page.skip + page.limit]
    ]
    return {"rows": rows, "totals": stats(total, fields)}, len(ordered)


def bucket_starts(rng: TimeRange, bucket: str, max_points: int) -> list[datetime]:
    """Start of every bucket overlapping the range; 422 when there would be too many."""
    seconds = BUCKET_SECONDS[bucket]
    first_s = math.floor(minute_floor(rng.start).timestamp() / seconds) * seconds
    count = math.ceil((rng.end.timestamp() - first_s) / seconds)
    if count > max_points:
        message = (
            f"{count} buckets of {bucket} in this range; at most {max_points}: use a larger bucket"
        )
        raise bad_parameter("bucket", "too_many_points", message, bucket)
    first = datetime.fromtimestamp(first_s, UTC)
    return [first + timedelta(seconds=seconds * i) for i in range(count)]


def _series_values(sums: Sums | None, metric: str) -> Any:
    if sums is None:
        return 0 if metric == "count" else None
    s = sums.scalars
    if metric == "count":
        return int(s.get("count", 0))
    if metric == "success_rate":
        return _success_rate(sums)
    if metric == "ttft_p95":
        return _q(sums.hists.get(TTFT), 0.95)
    return _q(sums.hists.get(LATENCY), 0.5 if metric == "p50" else 0.95)


async def provider_timeseries(
    db: AsyncDatabase[Document],
    rng: TimeRange,
    bucket: str,
    group_by: str,
    providers: Sequence[str],
    models: Sequence[str],
    metrics: Sequence[str],
    max_points: int,
    max_time_ms: int,
) -> Document:
    """Arrays aligned with the bucket starts, per group (``none``, ``provider``, ``model``)."""
    starts = bucket_starts(rng, bucket, max_points)
    unit, size = BUCKETS[bucket]
    key: Document = {"t": {"$dateTrunc": {"date": "$minute", "unit": unit, "binSize": size}}}
    names = {"none": [], "provider": ["provider"], "model": ["provider", "model"]}[group_by]
    key.update({name: f"${name}" for name in names})
    parts = [LATENCY] if {"p50", "p95"} & set(metrics) else []
    parts += [TTFT] if "ttft_p95" in metrics else []
    parts += [ERRORS] if "success_rate" in metrics else []
    groups = await collect(db, rollup_match(rng, providers, models), key, parts, max_time_ms)
    by_series: dict[GroupKey, dict[datetime, Sums]] = {} if names else {(): {}}
    for group, sums in groups.items():
        moment = group[0].astimezone(UTC) if group[0].tzinfo else group[0].replace(tzinfo=UTC)
        by_series.setdefault(group[1:], {})[moment] = sums
    series = []
    for ident in sorted(by_series):
        points = by_series[ident]
        entry: Document = dict(zip(names, ident, strict=True))
        for metric in metrics:
            entry[metric] = [_series_values(points.get(start), metric) for start in starts]
        series.append(entry)
    return {"bucket": bucket, "timestamps": starts, "series": series}

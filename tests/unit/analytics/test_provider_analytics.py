"""GET /api/analytics/providers and /timeseries against plain Python over the raw attempts."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from echotune.common.histogram import MAX_RELATIVE_ERROR
from echotune.common.request_faults import REQUEST_FAULT_CODES
from echotune.common.stop_reasons import STOPPED
from tests.unit.analytics.conftest import get_ok
from tests.unit.analytics.data import START, insert_attempts, make_attempts

Document = dict[str, Any]
PATH = "/api/analytics/providers"
RANGE = {"from": "2024-03-08T00:00:00Z", "to": "2024-03-08T06:00:00Z"}


def exact_quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile: the definition the histograms approximate."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def close(got: float | None, exact: float | None) -> bool:
    """Within the histogram's documented error (plus the 3-decimal rounding)."""
    if got is None or exact is None:
        return got is exact
    return abs(got - exact) <= exact * MAX_RELATIVE_ERROR + 1e-3


def success_rate(docs: list[Document]) -> float | None:
    """Successes of the calls that say something of the provider (not a Stop, not a 400)."""
    ended = [d for d in docs if d["errorCode"] not in STOPPED | REQUEST_FAULT_CODES]
    return sum(1 for d in ended if d["success"]) / len(ended) if ended else None


def figures(docs: list[Document]) -> Document:
    ok = [d for d in docs if d["success"]]
    ttfts = [d["ttftMs"] for d in docs if d["ttftMs"] is not None]
    latency = sum(d["latencyMs"] for d in docs)
    return {
        "requests": len(docs),
        "successes": len(ok),
        "success_rate": pytest.approx(success_rate(docs), abs=1e-6),
        "errors": dict(Counter(d["errorCode"] for d in docs if not d["success"])),
        "latency_avg": pytest.approx(latency / len(docs), abs=1e-3),
        "ttft_count": len(ttfts),
        "ttft_avg": pytest.approx(sum(ttfts) / len(ttfts), abs=1e-3),
        "tokens_in": sum(d["tokensIn"] for d in docs),
        "tokens_out": sum(d["tokensOut"] for d in docs),
        "tokens_per_s": pytest.approx(
            sum(d["tokensOut"] for d in docs) / (latency / 1000), abs=1e-3
        ),
        "latency": [d["latencyMs"] for d in docs],
        "ttft": ttfts,
    }


def check(row: Document, docs: list[Document]) -> None:
    want = figures(docs)
    for name in (
        "requests",
        "successes",
        "success_rate",
        "errors",
        "tokens_in",
        "tokens_out",
        "tokens_per_s",
    ):
        assert row[name] == want[name], name
    assert row["latency_ms"]["avg"] == want["latency_avg"]
    assert (row["ttft_ms"]["count"], row["ttft_ms"]["avg"]) == (
        want["ttft_count"],
        want["ttft_avg"],
    )
    for q in (50, 95, 99):
        assert close(row["latency_ms"][f"p{q}"], exact_quantile(want["latency"], q / 100)), q
    for q in (50, 95):
        assert close(row["ttft_ms"][f"p{q}"], exact_quantile(want["ttft"], q / 100)), q


async def test_summary_per_provider_model_and_totals(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    attempts = make_attempts()
    await insert_attempts(db, attempts)
    body = await get_ok(api, PATH, **RANGE)
    groups: dict[tuple[str, str], list[Document]] = defaultdict(list)
    for doc in attempts:
        groups[(doc["provider"], doc["model"])].append(doc)
    rows = body["data"]["rows"]
    assert [(r["provider"], r["model"]) for r in rows] == sorted(
        groups, key=lambda key: (-len(groups[key]), key)
    )
    for row in rows:
        check(row, groups[(row["provider"], row["model"])])
    check(body["data"]["totals"], attempts)
    meta = body["meta"]
    assert (meta["total"], meta["source"]) == (3, "provider_rollups_1m")
    assert meta["window"]["from"] == "2024-03-08T00:00:00Z"


async def test_filters_projection_and_window(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    attempts = make_attempts()
    await insert_attempts(db, attempts)
    body = await get_ok(
        api, PATH, provider="openai", model="gpt-b", fields="requests,latency_ms", **RANGE
    )
    (row,) = body["data"]["rows"]
    assert set(row) == {"provider", "model", "requests", "latency_ms"}
    assert set(body["data"]["totals"]) == {"requests", "latency_ms"}
    assert row["requests"] == sum(1 for d in attempts if d["model"] == "gpt-b")
    assert body["meta"]["filters"] == {"provider": ["openai"], "model": ["gpt-b"]}
    # two hours: the rollups of [01:00, 03:00)
    hours = await get_ok(
        api,
        PATH,
        fields="requests",
        **{"from": "2024-03-08T01:00:00Z", "to": "2024-03-08T03:00:00Z"},
    )
    lower, upper = START + timedelta(hours=1), START + timedelta(hours=3)
    assert hours["data"]["totals"]["requests"] == sum(
        1 for d in attempts if lower <= d["ts"] < upper
    )
    # nothing in the last hour before now
    recent = await get_ok(api, PATH, window="1h")
    assert recent["data"]["rows"] == []
    assert recent["data"]["totals"]["requests"] == 0
    assert recent["data"]["totals"]["latency_ms"]["p50"] is None
    assert recent["meta"]["window"]["window"] == "1h"


@pytest.mark.parametrize(("bucket", "seconds"), [("5m", 300), ("1h", 3600)])
async def test_timeseries_arrays(
    db: AsyncDatabase[Document], api: httpx.AsyncClient, bucket: str, seconds: int
) -> None:
    attempts = make_attempts()
    await insert_attempts(db, attempts)
    body = await get_ok(api, f"{PATH}/timeseries", bucket=bucket, group_by="provider", **RANGE)
    data = body["data"]
    starts = [START + timedelta(seconds=seconds * i) for i in range(6 * 3600 // seconds)]
    assert [datetime.fromisoformat(t) for t in data["timestamps"]] == starts
    assert [s["provider"] for s in data["series"]] == ["anthropic", "openai"]
    for series in data["series"]:
        assert set(series) == {"provider", "count", "success_rate", "p50", "p95", "ttft_p95"}
        mine = [d for d in attempts if d["provider"] == series["provider"]]
        for i, start in enumerate(starts):
            inside = [d for d in mine if start <= d["ts"] < start + timedelta(seconds=seconds)]
            assert series["count"][i] == len(inside)
            if not inside:
                assert (series["success_rate"][i], series["p95"][i]) == (None, None)
                continue
            assert series["success_rate"][i] == pytest.approx(success_rate(inside), abs=1e-6)
            latencies = [d["latencyMs"] for d in inside]
            assert close(series["p50"][i], exact_quantile(latencies, 0.5))
            assert close(series["p95"][i], exact_quantile(latencies, 0.95))
            ttfts = [d["ttftMs"] for d in inside if d["ttftMs"] is not None]
            assert close(series["ttft_p95"][i], exact_quantile(ttfts, 0.95))


async def test_timeseries_single_series_and_metric_choice(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    attempts = make_attempts()
    await insert_attempts(db, attempts)
    body = await get_ok(api, f"{PATH}/timeseries", bucket="1h", metrics="count", **RANGE)
    (series,) = body["data"]["series"]
    assert set(series) == {"count"}
    assert series["count"] == [
        sum(
            1
            for d in attempts
            if START + timedelta(hours=h) <= d["ts"] < START + timedelta(hours=h + 1)
        )
        for h in range(6)
    ]
    empty = await get_ok(
        api, f"{PATH}/timeseries", bucket="1h", window="24h", metrics=["count", "p95"]
    )
    (nothing,) = empty["data"]["series"]
    assert (set(nothing["count"]), set(nothing["p95"])) == ({0}, {None})
    assert len(nothing["count"]) == len(empty["data"]["timestamps"]) in (24, 25)
    assert datetime.fromisoformat(empty["data"]["timestamps"][-1]) <= datetime.now(UTC)


async def test_a_call_refused_for_its_own_request_is_no_failure_of_the_provider(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    """An HTTP 400 read as a failed call (rate 0.0) while the breaker and live health leave
    such 4xx calls out; a 401, 403 or 404 (a revoked key, an unknown model) stays a failure."""
    codes = [None, None, None, "http_503", "rate_limited", "http_400", "http_401", "http_422"]
    codes += ["http_403", "http_404", "http_409", "http_413", "cancelled"]
    attempts = [
        {**doc, "success": code is None, "errorCode": code}
        for doc, code in zip(make_attempts(count=len(codes)), codes, strict=True)
    ]
    await insert_attempts(db, attempts)
    body = await get_ok(api, PATH, fields="requests,success_rate,errors", **RANGE)
    totals = body["data"]["totals"]
    assert (totals["requests"], totals["success_rate"]) == (len(codes), 0.375)  # 3 of 8
    assert totals["errors"]["http_400"] == 1  # still counted, by code
    series = await get_ok(api, f"{PATH}/timeseries", bucket="1d", metrics="success_rate", **RANGE)
    assert series["data"]["series"] == [{"success_rate": [0.375]}]

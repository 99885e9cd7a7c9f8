"""Provider analytics: per provider and model figures, and time series for sparklines."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from echotune.analytics import params
from echotune.analytics.deps import DatabaseDep, FieldsQuery, PageDep, ProviderRangeDep, SettingsDep
from echotune.analytics.providers import (
    PROVIDER_FIELDS,
    SERIES_METRICS,
    provider_summary,
    provider_timeseries,
)
from echotune.analytics.responses import envelope
from echotune.analytics.schemas import ERROR_RESPONSES, Envelope, ProvidersData, TimeseriesData
from echotune.common.histogram import MAX_RELATIVE_ERROR, MIN_MS
from echotune.common.mongo import PROVIDER_ROLLUPS

router = APIRouter(prefix="/api/analytics/providers", tags=["provider analytics"])
NameFilter = Annotated[
    list[str] | None, Query(description="Only these (repeat the parameter for several)")
]
NOTES = [
    f"percentiles are read from log-scale histograms: within {MAX_RELATIVE_ERROR:.1%} of exact "
    f"from {MIN_MS:g} ms up; a faster value reads as about {MIN_MS:g} ms (avg is exact)",
    "the range is widened to whole minutes (rollups are per minute)",
]


@router.get(
    "",
    summary="Requests, success rate, errors, latency and TTFT percentiles, tokens/s",
    response_model=Envelope[ProvidersData],
    response_model_exclude_unset=True,
    responses=ERROR_RESPONSES,
)
async def providers(
    db: DatabaseDep,
    settings: SettingsDep,
    rng: ProviderRangeDep,
    page: PageDep,
    provider: NameFilter = None,
    model: NameFilter = None,
    fields: FieldsQuery = None,
) -> Any:
    """Per provider and model (most requests first, paginated) and totals over all of them.

    Computed from the per-minute rollups (`provider_rollups_1m`), never from raw attempts.
    `fields` picks figures among: requests, successes, success_rate, errors, latency_ms,
    ttft_ms, tokens_in, tokens_out, tokens_per_s.
    """
    chosen = params.field_list(fields, PROVIDER_FIELDS)
    data, total = await provider_summary(
        db, rng, provider or [], model or [], chosen, page, settings.query_timeout_ms
    )
    return envelope(
        data,
        rng=rng,
        with_tz=False,
        filters={"provider": provider, "model": model},
        fields=chosen,
        page=page,
        total=total,
        source=PROVIDER_ROLLUPS,
        notes=NOTES,
    )


@router.get(
    "/timeseries",
    summary="Per-bucket count, success rate, latency p50/p95 and TTFT p95, as aligned arrays",
    response_model=Envelope[TimeseriesData],
    response_model_exclude_unset=True,
    responses=ERROR_RESPONSES,
)
async def timeseries(
    db: DatabaseDep,
    settings: SettingsDep,
    rng: ProviderRangeDep,
    bucket: Annotated[Literal["1m", "5m", "1h", "1d"], Query(description="Bucket size")] = "1h",
    group_by: Annotated[
        Literal["none", "provider", "model"],
        Query(description="One series for all, per provider, or per provider and model"),
    ] = "none",
    provider: NameFilter = None,
    model: NameFilter = None,
    metrics: Annotated[
        list[str] | None,
        Query(description="Among count, success_rate, p50, p95, ttft_p95 (default all)"),
    ] = None,
) -> Any:
    """Arrays aligned with `timestamps` (bucket starts, UTC): ready for sparklines.

    Buckets without attempts have count 0 and null rates/percentiles. At most
    `ECHOTUNE_ANALYTICS_MAX_POINTS` buckets: a longer range needs a larger bucket.
    """
    chosen = params.field_list(metrics, SERIES_METRICS, param="metrics")
    data = await provider_timeseries(
        db,
        rng,
        bucket,
        group_by,
        provider or [],
        model or [],
        chosen,
        settings.max_points,
        settings.query_timeout_ms,
    )
    return envelope(
        data,
        rng=rng,
        with_tz=False,
        filters={"provider": provider, "model": model, "group_by": group_by},
        fields=chosen,
        source=PROVIDER_ROLLUPS,
        notes=NOTES,
    )

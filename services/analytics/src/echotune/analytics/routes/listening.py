"""Listening patterns of one user or everyone, in a chosen time zone."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from echotune.analytics import params
from echotune.analytics.deps import (
    DatabaseDep,
    FieldsQuery,
    ListeningRangeDep,
    PageDep,
    SettingsDep,
    UserIdQuery,
)
from echotune.analytics.listening import LISTENING_FIELDS, listening_patterns
from echotune.analytics.responses import envelope
from echotune.analytics.schemas import ERROR_RESPONSES, Envelope, ListeningData
from echotune.common.mongo import LISTENING_HISTORY

router = APIRouter(prefix="/api/analytics", tags=["listening"])


@router.get(
    "/listening-patterns",
    summary="Timeline and hour-of-day / day-of-week distributions of plays",
    response_model=Envelope[ListeningData],
    response_model_exclude_unset=True,
    responses=ERROR_RESPONSES,
)
async def patterns(
    db: DatabaseDep,
    settings: SettingsDep,
    rng: ListeningRangeDep,
    page: PageDep,
    user_id: UserIdQuery = None,
    granularity: Annotated[
        Literal["hour", "day", "week"], Query(description="Timeline bucket (weeks start Monday)")
    ] = "day",
    fields: FieldsQuery = None,
) -> Any:
    """Plays, distinct tracks and minutes listened: `totals`, a `timeline` (paginated with
    `page`/`limit`, oldest first, empty buckets left out), `by_hour` (24 local hours),
    `by_weekday` (ISO 1 = Monday … 7) and the weekday × hour `matrix`, all in `tz`.
    Naive `from`/`to` are local times in `tz`."""
    chosen = params.field_list(fields, LISTENING_FIELDS)
    data, total = await listening_patterns(
        db, rng, user_id, granularity, chosen, page, settings.query_timeout_ms
    )
    paged = "timeline" in chosen
    return envelope(
        data,
        rng=rng,
        filters={"user_id": user_id, "granularity": granularity},
        fields=chosen,
        page=page if paged else None,
        total=total,
        source=LISTENING_HISTORY,
    )

"""Engagement insights: KPIs, sessions, top artists and genres."""

from __future__ import annotations

from typing import Annotated, Any

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
from echotune.analytics.insights import ENGAGEMENT_FIELDS, engagement
from echotune.analytics.responses import envelope
from echotune.analytics.schemas import ERROR_RESPONSES, EngagementData, Envelope
from echotune.common.mongo import LISTENING_HISTORY

router = APIRouter(prefix="/api/insights", tags=["insights"])


@router.get(
    "/engagement",
    summary="Plays, hours, distinct tracks/artists, skip and repeat rates, sessions, tops",
    response_model=Envelope[EngagementData],
    response_model_exclude_unset=True,
    responses=ERROR_RESPONSES,
)
async def engagement_insights(
    db: DatabaseDep,
    settings: SettingsDep,
    rng: ListeningRangeDep,
    page: PageDep,
    user_id: UserIdQuery = None,
    session_gap_min: Annotated[
        float | None,
        Query(gt=0, le=1440, description="Session gap rule in minutes (default from settings)"),
    ] = None,
    fields: FieldsQuery = None,
) -> Any:
    """`kpis`, and `top_artists` / `top_genres` by plays (paginated together with
    `page`/`limit`; `meta.total` gives the length of each list).

    Sessions: a play that starts more than `session_gap_min` (default 30) after the previous
    play of the same user ended starts a new session; a session lasts from its first play's
    start to its last play's end. Skip rate counts only plays whose skipped flag is known.
    Repeat rate = (plays − distinct tracks) / plays.
    """
    chosen = params.field_list(fields, ENGAGEMENT_FIELDS)
    gap = session_gap_min or settings.session_gap_min
    data, totals = await engagement(db, rng, user_id, chosen, page, gap, settings.query_timeout_ms)
    has_lists = bool(totals)
    return envelope(
        data,
        rng=rng,
        filters={"user_id": user_id},
        fields=chosen,
        page=page if has_lists else None,
        total=totals if has_lists else None,
        source=LISTENING_HISTORY,
    )

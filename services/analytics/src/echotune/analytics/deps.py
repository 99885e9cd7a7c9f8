"""Annotated dependency aliases: the app's state and the checked query parameters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics import params
from echotune.analytics.errors import bad_parameter
from echotune.analytics.params import ListeningWindow, Page, ProviderWindow, TimeRange
from echotune.analytics.settings import AnalyticsSettings
from echotune.web.requestid import QUERY as REQUEST_ID_QUERY

Document = dict[str, Any]
FROM_DOC = "Start (inclusive), ISO 8601; without an offset it is in `tz` (UTC for providers)"
TO_DOC = "End (exclusive), ISO 8601; default now"
IMPOSED = frozenset({"user_id", REQUEST_ID_QUERY})
"""Taken on every route: the gateway sets ``user_id`` on every request it forwards (where it
filters nothing too), and any request may name its id so (``echotune.web.requestid``)."""


def _settings(request: Request) -> AnalyticsSettings:
    settings: AnalyticsSettings = request.app.state.settings
    return settings


def _client(request: Request) -> AsyncMongoClient[Document]:
    client: AsyncMongoClient[Document] = request.app.state.mongo
    return client


def _database(request: Request) -> AsyncDatabase[Document]:
    db: AsyncDatabase[Document] = request.app.state.db
    return db


def _declared(dependant: Dependant) -> Iterator[str]:
    """Query parameter names of ``dependant`` and of its dependencies, as sent (aliases)."""
    yield from (param.alias for param in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _declared(sub)


def _known_parameters_only(request: Request) -> None:
    """422 ``extra_forbidden`` for a query parameter the route does not declare (a typo such
    as ``provder=x`` answered unfiltered data), as the gateway's ``StreamQuery`` does."""
    declared = set(_declared(request.scope["route"].dependant)) | IMPOSED
    unknown = [name for name in request.query_params if name not in declared]
    if unknown:
        raise RequestValidationError([_extra(name, request.query_params[name]) for name in unknown])


def _extra(name: str, value: str) -> dict[str, Any]:
    message = "Extra inputs are not permitted"  # pydantic's words for extra="forbid"
    return {"type": "extra_forbidden", "loc": ("query", name), "msg": message, "input": value}


KNOWN_PARAMETERS_ONLY = [Depends(_known_parameters_only)]
"""Router dependencies of every analytics route."""

SettingsDep = Annotated[AnalyticsSettings, Depends(_settings)]
MongoClientDep = Annotated[AsyncMongoClient[Document], Depends(_client)]
DatabaseDep = Annotated[AsyncDatabase[Document], Depends(_database)]


def _time_zone(
    tz: Annotated[str | None, Query(description="IANA time zone, e.g. Europe/Paris; UTC")] = None,
    time_zone: Annotated[str | None, Query(description="Same as `tz` (the chat's name)")] = None,
) -> str:
    """``tz`` or ``time_zone``: the chat's name was ignored here (a 200 in UTC)."""
    if tz is not None and time_zone is not None and tz != time_zone:
        message = f"tz {tz!r} and time_zone {time_zone!r} disagree: give one"
        raise bad_parameter("time_zone", "conflicting_time_zones", message, time_zone)
    name = tz if tz is not None else time_zone if time_zone is not None else "UTC"
    params.time_zone(name, "tz" if tz is not None else "time_zone")
    return name


TimeZoneDep = Annotated[str, Depends(_time_zone)]


def _provider_range(
    settings: SettingsDep,
    window: Annotated[ProviderWindow, Query(description="Window ending now")] = "24h",
    start: Annotated[str | None, Query(alias="from", description=FROM_DOC)] = None,
    end: Annotated[str | None, Query(alias="to", description=TO_DOC)] = None,
) -> TimeRange:
    return params.time_range(window, start, end, max_days=settings.max_range_days)


def _listening_range(
    settings: SettingsDep,
    tz: TimeZoneDep,
    window: Annotated[ListeningWindow, Query(description="Window ending now")] = "all",
    start: Annotated[str | None, Query(alias="from", description=FROM_DOC)] = None,
    end: Annotated[str | None, Query(alias="to", description=TO_DOC)] = None,
) -> TimeRange:
    return params.time_range(window, start, end, tz_name=tz, max_days=settings.max_range_days)


ProviderRangeDep = Annotated[TimeRange, Depends(_provider_range)]
ListeningRangeDep = Annotated[TimeRange, Depends(_listening_range)]


def _page(
    settings: SettingsDep,
    page: Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1")] = 1,
    limit: Annotated[int | None, Query(ge=1, description="Items per page (capped)")] = None,
) -> Page:
    return params.page(
        page,
        limit,
        default=settings.default_limit,
        maximum=settings.max_limit,
        max_offset=settings.max_offset,
    )


PageDep = Annotated[Page, Depends(_page)]
FieldsQuery = Annotated[
    list[str] | None,
    Query(description="Parts to return: comma-separated and/or repeated names"),
]
UserIdQuery = Annotated[
    str | None, Query(min_length=1, max_length=128, description="Only this user's plays")
]

"""Every query of every endpoint is index-backed: captured as sent, then explained.

The app's MongoDB commands are recorded with a PyMongo command listener while each endpoint
answers; each recorded query is then run through ``explain`` and must show no COLLSCAN and no
sort that the scanned index does not serve (see ``plans.py``).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from echotune.common.mongo import CONVERSATIONS
from tests.unit.analytics.data import insert_attempts, insert_plays, make_attempts, make_plays
from tests.unit.analytics.plans import problems, sort_stages
from tests.unit.analytics.test_conversations import conversation

Document = dict[str, Any]
QUERIES = ("aggregate", "find", "count", "distinct")
KEEP = {
    "aggregate", "pipeline", "cursor", "hint", "find", "filter", "sort", "projection",
    "skip", "limit", "count", "query", "distinct", "key",
}  # fmt: skip
RANGE = {"from": "2024-03-01T00:00:00Z", "to": "2024-04-01T00:00:00Z"}
CALLS: list[tuple[str, Document]] = [
    ("/api/analytics/providers", RANGE),
    ("/api/analytics/providers", {**RANGE, "provider": "openai"}),
    ("/api/analytics/providers", {**RANGE, "provider": "openai", "model": "gpt-a"}),
    ("/api/analytics/providers", {"window": "24h", "fields": "requests"}),
    ("/api/analytics/providers/timeseries", {**RANGE, "bucket": "1d", "group_by": "model"}),
    ("/api/analytics/providers/timeseries", {"window": "7d", "provider": "anthropic"}),
    ("/api/analytics/listening-patterns", {"tz": "Asia/Tokyo"}),
    ("/api/analytics/listening-patterns", {"user_id": "alice", "granularity": "week", **RANGE}),
    ("/api/insights/engagement", {}),
    ("/api/insights/engagement", {"user_id": "bob", "window": "30d"}),
    ("/api/conversations", {"user_id": "alice", "page": 2, "limit": 3}),
    ("/api/conversations/conv-alice-1", {}),
]


class Recorder(monitoring.CommandListener):
    """Keeps the query commands sent to one database."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.commands: list[Document] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in QUERIES and event.database_name == self.database:
            self.commands.append({k: v for k, v in event.command.items() if k in KEEP})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def explained_queries(
    db: AsyncDatabase[Document], api: httpx.AsyncClient, mongo_server_url: str
) -> list[tuple[str, Document, Document]]:
    """(endpoint, command, explain) for every query the endpoints sent."""
    await insert_plays(db, make_plays())
    await insert_attempts(db, make_attempts())
    await db[CONVERSATIONS].insert_many([conversation(n, "alice") for n in range(8)])
    recorder = Recorder(db.name)
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongo_server_url, tz_aware=True, event_listeners=[recorder]
    )
    api.app.state.db = client[db.name]  # type: ignore[attr-defined]
    results = []
    try:
        for path, params in CALLS:
            recorder.commands.clear()
            response = await api.get(path, params=params)
            assert response.status_code == 200, response.text
            assert recorder.commands, f"{path} sent no query"
            for command in list(recorder.commands):
                plan = await db.command("explain", command, verbosity="queryPlanner")
                results.append((f"{path}?{params}", command, plan))
    finally:
        await client.close()
    return results


async def test_every_query_uses_an_index(
    db: AsyncDatabase[Document], api: httpx.AsyncClient, mongo_server_url: str
) -> None:
    results = await explained_queries(db, api, mongo_server_url)
    assert len(results) >= len(CALLS)
    failures = [
        f"{call}\n  {next(iter(command.values()))}: {issue}"
        for call, command, plan in results
        for issue in problems(plan)
    ]
    assert not failures, "\n".join(failures)


@pytest.mark.mongodb_only(
    reason="SecantusDB shows a SORT stage above every sorted index scan, so it cannot show "
    "that MongoDB streams these sorts from the index instead of sorting in memory"
)
async def test_sorted_queries_need_no_sort_stage(
    db: AsyncDatabase[Document], api: httpx.AsyncClient, mongo_server_url: str
) -> None:
    results = await explained_queries(db, api, mongo_server_url)
    sorted_queries = [
        (call, plan)
        for call, command, plan in results
        if "sort" in command or any("$setWindowFields" in s for s in command.get("pipeline", []))
    ]
    assert len(sorted_queries) >= 3  # the conversation list and both session pipelines
    for call, plan in sorted_queries:
        assert sort_stages(plan) == [], call


def test_the_plan_reader_catches_scans_and_sorts() -> None:
    collscan = {"queryPlanner": {"winningPlan": {"stage": "COLLSCAN"}, "namespace": "d.c"}}
    assert problems(collscan) == ["COLLSCAN on d.c"]
    ixscan = {"stage": "IXSCAN", "keyPattern": {"userId": 1, "lastActivity": -1}}
    served = {
        "queryPlanner": {
            "parsedQuery": {"userId": {"$eq": "a"}},
            "winningPlan": {
                "stage": "SORT",
                "sortPattern": {"lastActivity": -1},
                "inputStage": ixscan,
            },
        }
    }
    assert problems(served) == []
    unserved = {
        "queryPlanner": {
            "parsedQuery": {"userId": {"$gt": "a"}},
            "winningPlan": {
                "stage": "SORT",
                "sortPattern": {"lastActivity": -1},
                "inputStage": ixscan,
            },
        }
    }
    assert problems(unserved) != []
    pipeline = {
        "stages": [
            {
                "$cursor": {
                    "queryPlanner": {
                        "parsedQuery": {},
                        "winningPlan": {
                            "stage": "FETCH",
                            "inputStage": {"stage": "IXSCAN", "keyPattern": {"playedAt": 1}},
                        },
                    }
                }
            },
            {"$sort": {"sortKey": {"userId": 1, "playedAt": 1}}},
        ]
    }
    assert problems(pipeline) != []

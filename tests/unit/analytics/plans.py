"""Reading ``explain`` output: which stages ran, and whether each sort is served by an index.

Works on MongoDB (classic and SBE ``queryPlan``) and on SecantusDB, which always shows a
``SORT`` stage above an index scan (even when the index order serves the sort) and lists an
aggregation's ``$sort`` as a separate stage after ``$cursor``. A sort is accepted when the
index actually scanned provides its order (equality-bound key fields may be skipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Document = dict[str, Any]
SHAPING = ("$group", "$project", "$unwind", "$facet", "$addFields", "$set", "$bucket", "$count")


def plan_nodes(node: Any) -> Iterator[Document]:
    """Every plan stage under ``node`` (rejected plans and runtime stats left out)."""
    if isinstance(node, dict):
        if "stage" in node:
            yield node
        for key, value in node.items():
            if key not in ("rejectedPlans", "executionStats", "allPlansExecution", "command"):
                yield from plan_nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from plan_nodes(item)


def planners(explained: Document) -> list[Document]:
    """The ``queryPlanner`` sections of an explain (one per ``$cursor``, or the top one)."""
    found = [s["$cursor"]["queryPlanner"] for s in explained.get("stages", []) if "$cursor" in s]
    if not found and "queryPlanner" in explained:
        found.append(explained["queryPlanner"])
    return found


def equality_fields(parsed: Document) -> set[str]:
    """Fields the query binds to a single value."""
    fields: set[str] = set()
    for clause in parsed.get("$and", [parsed]):
        for name, condition in clause.items():
            if name.startswith("$") or not isinstance(condition, dict):
                continue
            if "$eq" in condition or len(condition.get("$in", [])) == 1:
                fields.add(name)
    return fields


def index_provides(key: Document, sort: Document, equal: set[str]) -> bool:
    """True when scanning ``key`` yields documents in ``sort`` order (either direction)."""
    remaining = [(f, int(d)) for f, d in key.items() if f not in equal]
    wanted = [(f, int(d)) for f, d in sort.items() if f not in equal]
    prefix = remaining[: len(wanted)]
    if [f for f, _ in prefix] != [f for f, _ in wanted]:
        return False
    same = all(d == w for (_, d), (_, w) in zip(prefix, wanted, strict=True))
    reverse = all(d == -w for (_, d), (_, w) in zip(prefix, wanted, strict=True))
    return same or reverse


def index_scans(node: Any) -> list[Document]:
    """The index scans under ``node``."""
    return [n for n in plan_nodes(node) if n["stage"] in ("IXSCAN", "EXPRESS_IXSCAN")]


def problems(explained: Document) -> list[str]:
    """Collection scans, and sorts that no scanned index serves."""
    found: list[str] = []
    for planner in planners(explained):
        plan = planner["winningPlan"]
        equal = equality_fields(planner.get("parsedQuery", {}))
        for node in plan_nodes(plan):
            if node["stage"] == "COLLSCAN":
                found.append(f"COLLSCAN on {planner.get('namespace')}")
            if node["stage"] == "SORT":
                scans = index_scans(node)
                if not any(
                    index_provides(s["keyPattern"], node["sortPattern"], equal) for s in scans
                ):
                    found.append(f"blocking SORT {node['sortPattern']} over {scans or 'a scan'}")
    stages = explained.get("stages", [])
    if stages and "$cursor" in stages[0]:
        planner = stages[0]["$cursor"]["queryPlanner"]
        scans = index_scans(planner["winningPlan"])
        equal = equality_fields(planner.get("parsedQuery", {}))
        for stage in stages[1:]:
            name = next(iter(stage))
            if name in SHAPING:
                break
            if name == "$sort":
                sort = stage["$sort"].get("sortKey", stage["$sort"])
                if not any(index_provides(s["keyPattern"], sort, equal) for s in scans):
                    found.append(f"blocking $sort {sort} after {scans or 'a scan'}")
    return found


def sort_stages(explained: Document) -> list[str]:
    """Every SORT stage of the winning plans and every ``$sort`` stage of the pipeline."""
    sorts = [
        str(node.get("sortPattern"))
        for planner in planners(explained)
        for node in plan_nodes(planner["winningPlan"])
        if node["stage"] == "SORT"
    ]
    sorts += [str(s["$sort"]) for s in explained.get("stages", []) if "$sort" in s]
    return sorts

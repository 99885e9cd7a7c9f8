"""What each Redis node does during a round: commands, bytes and CPU, per node and per token.

On one Redis there is one node; on a cluster every primary and replica is measured, so the
report shows how the per-token load spreads over the nodes. Commands and bytes come from
``INFO commandstats`` and ``INFO stats`` before and after the round (the ``INFO`` calls
themselves are subtracted), CPU from ``/proc`` (the round's ``cpu_s`` of ``redis-…``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from deploy.local.servers import local_redis, local_redis_cluster

INFO_CALLS = 3  # per node and snapshot: commandstats, stats, replication


@dataclass(frozen=True)
class Node:
    name: str  # ``redis`` (one Redis) or ``redis-<role>-<port>`` (a cluster node)
    port: int
    pid: int


@contextlib.contextmanager
def redis_for_bench(cluster: bool) -> Iterator[tuple[str, list[int]]]:
    """A local Redis (or cluster: 3 primaries, a replica each): its URL and node ports."""
    if cluster:
        with local_redis_cluster() as servers:
            yield servers.url, [n.port for n in servers.nodes]
    else:
        with local_redis() as url:
            yield url, [int(url.rsplit(":", 1)[1].split("/")[0])]


async def nodes_of(ports: list[int], cluster: bool) -> list[Node]:
    nodes = []
    for port in ports:
        client = Redis(port=port, decode_responses=True)
        try:
            server = await client.info("server")
            role = (await client.info("replication"))["role"]
        finally:
            await client.aclose()
        name = (
            f"redis-{'primary' if role == 'master' else 'replica'}-{port}" if cluster else "redis"
        )
        nodes.append(Node(name, port, int(server["process_id"])))
    return sorted(nodes, key=lambda n: n.name)


async def snapshot(nodes: list[Node]) -> dict[str, dict[str, Any]]:
    """Per node: calls per command, bytes in and out."""
    shot: dict[str, dict[str, Any]] = {}
    for node in nodes:
        client = Redis(port=node.port, decode_responses=True)
        try:
            commands = await client.info("commandstats")
            stats = await client.info("stats")
            await client.info("replication")
        finally:
            await client.aclose()
        calls = {
            name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in commands.items()
        }
        shot[node.name] = {
            "calls": calls,
            "net_in": int(stats["total_net_input_bytes"]),
            "net_out": int(stats["total_net_output_bytes"]),
        }
    return shot


def difference(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """What each node did between two snapshots (minus the snapshots' own ``INFO`` calls)."""
    out: dict[str, dict[str, Any]] = {}
    for name, end in after.items():
        start = before.get(name, {"calls": {}, "net_in": 0, "net_out": 0})
        calls = {
            command: count - start["calls"].get(command, 0)
            for command, count in end["calls"].items()
        }
        calls["info"] = calls.get("info", 0) - INFO_CALLS
        out[name] = {
            "calls": {c: n for c, n in calls.items() if n > 0},
            "net_in": end["net_in"] - start["net_in"],
            "net_out": end["net_out"] - start["net_out"],
        }
    return out


def aggregate(rounds: list[dict[str, Any]], tokens: int, streams: int) -> dict[str, Any]:
    """Per node, over ``rounds``: commands, bytes and CPU per token and per answer, and the
    node's share of all commands and of all Redis CPU."""
    nodes: dict[str, dict[str, Any]] = {}
    for r in rounds:
        for name, did in r.get("redis_nodes", {}).items():
            node = nodes.setdefault(name, {"calls": {}, "net_in": 0, "net_out": 0, "cpu_s": 0.0})
            for command, count in did["calls"].items():
                node["calls"][command] = node["calls"].get(command, 0) + count
            node["net_in"] += did["net_in"]
            node["net_out"] += did["net_out"]
            node["cpu_s"] += r["cpu_s"].get(name, 0.0)
    if not nodes or not tokens:
        return {}
    all_calls = sum(sum(n["calls"].values()) for n in nodes.values()) or 1
    all_cpu = sum(n["cpu_s"] for n in nodes.values()) or 1e-9
    table = {}
    for name, node in sorted(nodes.items()):
        calls = sum(node["calls"].values())
        table[name] = {
            "commands_per_token": round(calls / tokens, 3),
            "commands_per_answer": round(calls / streams, 1) if streams else None,
            "bytes_in_per_token": round(node["net_in"] / tokens, 1),
            "bytes_out_per_token": round(node["net_out"] / tokens, 1),
            "cpu_us_per_token": round(1e6 * node["cpu_s"] / tokens, 2),
            "share_of_commands_pct": round(100 * calls / all_calls, 1),
            "share_of_cpu_pct": round(100 * node["cpu_s"] / all_cpu, 1),
            "commands": dict(sorted(node["calls"].items(), key=lambda kv: -kv[1])),
        }
    return table


def markdown(levels: list[dict[str, Any]]) -> str:
    """One row per level and node (arm B): the per-token load and each node's share of it."""
    rows = [
        (level["level"], name, node)
        for level in levels
        for name, node in level.get("redis_nodes", {}).items()
    ]
    if not rows:
        return ""
    lines = [
        "Redis per node (arm B): commands, bytes and CPU per relayed token, share of the load",
        "",
        "| streams | node | commands/token | bytes in / out per token | µs CPU/token "
        "| share of commands | share of CPU | top 8 commands (calls) |",
        "|---:|---|---:|---|---:|---:|---:|---|",
    ]
    for level, name, node in rows:
        top = ", ".join(f"{c} {n}" for c, n in list(node["commands"].items())[:8])
        lines.append(
            f"| {level} | {name} | {node['commands_per_token']} | {node['bytes_in_per_token']:.0f}"
            f" / {node['bytes_out_per_token']:.0f} | {node['cpu_us_per_token']} "
            f"| {node['share_of_commands_pct']} % | {node['share_of_cpu_pct']} % | {top} |"
        )
    return "\n".join(lines)

"""The gateway's CPU per chat start, in process: what the 500-stream ramp pays per answer.

``python -m deploy.bench.start_cost [--n 2000] [--rounds 3]`` (``make bench-start``) runs the
gateway's ASGI app (its lifespan, its middlewares, a real Redis; no HTTP server, no worker)
and sends it the bench's start request, ``GET /api/chat/stream``, ``--n`` times per round;
each client leaves after the ``start`` frame. Beside it, as floors of the same run: a route
that does nothing behind the same middlewares, and the same start with authentication off
(no API key lookup). Arms are interleaved round by round; the median round is printed.

A full bench run at 500 streams moves by 10-20 % with the machine's phase; this measures one
process's CPU (``time.process_time``), arms interleaved, so a difference between arms (or two
runs side by side) shows a change to the start path. Starts here wake the idle relay's read,
which a loaded gateway mostly skips, and end by the client leaving rather than by a final
event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response

from deploy.local.gateway_app import running_gateway
from deploy.local.servers import redis_url

API_KEY = "et_startcost_" + "k" * 43
BARE = "/start-cost/bare"
UNLIMITED = 10**9


@contextlib.asynccontextmanager
async def gateway(url: str, *, auth: bool) -> AsyncIterator[FastAPI]:
    """A gateway whose limits never refuse, with ``BARE`` added, its lifespan running."""
    async with running_gateway(
        url,
        auth_enabled=auth,
        dev_api_key=API_KEY,
        chat_starts_per_minute_user=UNLIMITED,
        chat_starts_per_minute_ip=UNLIMITED,
        max_open_streams_per_user=UNLIMITED,
        max_backlog=UNLIMITED,
        log_level="WARNING",
    ) as app:

        async def bare(request: Request) -> Response:
            return Response(status_code=204)

        app.add_api_route(BARE, bare)
        yield app


def scope(path: str, n: int) -> dict[str, Any]:
    """The bench client's start request (``deploy/bench/client.py``) as an ASGI scope."""
    rid = f"sc-{uuid.uuid4().hex[:16]}"
    query = f"message=bench&request_id={rid}&provider=demo&model=echotune-demo-1"
    query += "&use_context=false&use_profile=false"
    headers = [(b"host", b"127.0.0.1:8080"), (b"authorization", f"Bearer {API_KEY}".encode())]
    headers += [(b"accept", b"text/event-stream"), (b"connection", b"close")]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 20000 + n % 40000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }


async def request(app: FastAPI, path: str, n: int) -> int:
    """One request; the client leaves once the response sent its first body bytes or ended."""
    answered = asyncio.Event()
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message.get("body") or not message.get("more_body", False):
            answered.set()

    await app(scope(path, n), receive, send)
    return status[0]


async def cpu_per_request(app: FastAPI, path: str, n: int) -> float:
    """µs of this process's CPU per request, over ``n`` sequential requests."""
    began = time.process_time()
    statuses = {await request(app, path, i) for i in range(n)}
    spent = time.process_time() - began
    if statuses - {200, 204}:
        raise RuntimeError(f"{path} answered {sorted(statuses)}")
    return spent / n * 1e6


async def measure(url: str, n: int, rounds: int) -> dict[str, float]:
    """Median µs of CPU per request of each arm over ``rounds`` interleaved rounds."""
    async with (
        gateway(url, auth=True) as keyed,
        gateway(url, auth=False) as open_,
    ):
        arms = {
            "middlewares only (a route doing nothing)": (keyed, BARE),
            "chat start, authentication off": (open_, "/api/chat/stream"),
            "chat start, API key": (keyed, "/api/chat/stream"),
        }
        for app, path in arms.values():  # warm-up: imports, caches, connections
            await cpu_per_request(app, path, min(n, 100))
        found: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(rounds):
            for name, (app, path) in arms.items():
                found[name].append(await cpu_per_request(app, path, n))
    return {name: round(statistics.median(values), 1) for name, values in found.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="requests per arm and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per arm (median printed)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds take a positive number")
    with redis_url() as url:
        results = _run(measure(url, args.n, args.rounds))
    for name, us in results.items():
        print(f"{us:8.1f} µs CPU per request  {name}")
    print(json.dumps(results))
    return results


def _run(main: Coroutine[Any, Any, dict[str, float]]) -> dict[str, float]:
    """On uvloop when installed, as the gateway runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    main()

"""Awaiting what services write into Redis, without polling."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.asyncio import Redis

from echotune.common.keys import Keys


async def wait_for_final(
    redis: Redis, namespace: str, request_id: str, timeout: float = 15.0
) -> dict[str, Any]:
    """Block on the request's event stream until its ``done``/``error`` entry; return its data."""
    key, last = Keys(namespace).events(request_id), "0-0"
    async with asyncio.timeout(timeout):
        while True:
            for _, entries in await redis.xread({key: last}, block=1000) or ():
                for entry_id, fields in entries:
                    last = entry_id
                    if fields["type"] in ("done", "error"):
                        return {"type": fields["type"], **json.loads(fields["data"])}

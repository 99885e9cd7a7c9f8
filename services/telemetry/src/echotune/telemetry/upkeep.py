"""Startup and housekeeping: migration (waiting for MongoDB), old batch ids, the subscribers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from redis.asyncio import Redis

from echotune.common.consuming import Subscriber, restart_stopped
from echotune.common.keys import TELEMETRY_GROUP
from echotune.common.mongo import PROVIDER_ROLLUPS, until_done
from echotune.common.redis import ensure_group
from echotune.telemetry.migrations import migrate
from echotune.telemetry.rollups import forget_old_batches
from echotune.telemetry.settings import TelemetrySettings

log = logging.getLogger(__name__)
FORGET_EVERY_S = 600.0
CHECK_S = 1.0


async def migrate_until_done(
    db: AsyncDatabase[dict[str, Any]], settings: TelemetrySettings
) -> None:
    """Run the migration, waiting (with back-off) for MongoDB if it is not reachable yet."""
    await until_done(
        lambda: migrate(db, settings.raw_ttl_days, settings.rollup_ttl_days),
        "telemetry migration",
        base_s=settings.retry_base_s,
        cap_s=settings.retry_cap_s,
    )


async def forget_old_batches_forever(
    db: AsyncDatabase[dict[str, Any]], window: timedelta, every_s: float = FORGET_EVERY_S
) -> None:
    """Every ``every_s``, drop the batch ids older than the dedup window from the rollups."""
    while True:
        try:
            forgotten = await forget_old_batches(db[PROVIDER_ROLLUPS], datetime.now(UTC) - window)
            if forgotten:
                log.info("dropped the batch ids of %d rollups past the dedup window", forgotten)
        except PyMongoError as exc:
            log.warning("could not drop old batch ids from the rollups: %s", exc)
        await asyncio.sleep(every_s)


async def keep_consuming(redis: Redis, stream: str, subscribers: Sequence[Subscriber]) -> None:
    """If Redis lost the telemetry group (its data), create it again and read again."""
    recreate = partial(ensure_group, redis, stream, TELEMETRY_GROUP)
    while True:
        try:
            if await restart_stopped(subscribers, recreate):
                log.warning("restarted the subscribers of %s", stream)
        except Exception:
            log.exception("could not check the subscribers")
        await asyncio.sleep(CHECK_S)

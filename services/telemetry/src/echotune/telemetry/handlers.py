"""The telemetry service's FastStream handlers: new batches, and batches a crashed consumer
left pending. Entries reach them undecoded (``raw_batch``): a bad one dead-letters itself."""

from __future__ import annotations

from typing import Annotated

from faststream.redis.annotations import RedisBatchStreamMessage
from faststream.redis.message import FAKE_CONSUMER, BatchStreamMessage
from faststream.redis.message import RedisBatchStreamMessage as BatchMessage

from echotune.common.consuming import InlineContext
from echotune.common.keys import TELEMETRY_GROUP
from echotune.telemetry.consumer import BatchConsumer

ConsumerDep = Annotated[BatchConsumer, InlineContext("telemetry")]


async def raw_batch(message: BatchStreamMessage) -> BatchMessage:
    """Hand a batch over undecoded: entries are decoded one by one, so a bad one only
    dead-letters itself instead of failing FastStream's parser for the whole batch."""
    return BatchMessage(
        raw_message=message,
        body=b"[]",
        content_type="application/json",
        consumer=FAKE_CONSUMER,  # acks go through BatchConsumer, atomically with dead letters
        group=TELEMETRY_GROUP,
    )


async def write_batch(message: RedisBatchStreamMessage, telemetry: ConsumerDep) -> None:
    """Write a batch of new telemetry events into MongoDB, then acknowledge it."""
    raw = message.raw_message
    await telemetry.handle(raw["message_ids"], raw["data"], telemetry.consumer, False)


async def reclaim_batch(message: RedisBatchStreamMessage, telemetry: ConsumerDep) -> None:
    """Write entries left pending by a crashed consumer, then acknowledge them."""
    raw = message.raw_message
    await telemetry.handle(raw["message_ids"], raw["data"], telemetry.reclaimer, True)

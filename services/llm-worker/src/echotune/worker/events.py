"""Writes one request's chat events into its Redis stream."""

from __future__ import annotations

import time
from typing import Any, cast

from redis.asyncio import Redis

from echotune.common.completion import TokenLogprob, ToolCallDelta
from echotune.common.keys import Keys
from echotune.common.messages import ChatEvent, DeltaEvent, encode_event
from echotune.common.streams import append_final


class EventWriter:
    """Appends events to ``Keys.events(request_id)``; the final one exactly once."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        request_id: str,
        *,
        maxlen: int,
        final_ttl_s: int,
        stamp: bool = False,
    ) -> None:
        self._redis, self._keys, self.request_id = redis, keys, request_id
        self._key = keys.events(request_id)
        self._maxlen, self._final_ttl_s, self._stamp = maxlen, final_ttl_s, stamp
        self.deltas = 0

    async def emit(self, event: ChatEvent) -> None:
        await self._redis.xadd(
            self._key, cast(Any, encode_event(event)), maxlen=self._maxlen, approximate=True
        )

    async def delta(
        self,
        text: str,
        *,
        tool_calls: list[ToolCallDelta] | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> None:
        self.deltas += 1
        event = DeltaEvent(
            delta=text,
            tool_calls=tool_calls,
            logprobs=logprobs,
            t=time.monotonic_ns() if self._stamp else None,
        )
        if self.deltas > 1:
            await self.emit(event)
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(
                self._key, cast(Any, encode_event(event)), maxlen=self._maxlen, approximate=True
            )
            pipe.hset(self._keys.meta(self.request_id), "streamed", "1")
            await pipe.execute()

    async def final(self, event: ChatEvent) -> bool:
        """Append ``event`` as the last one; ``False`` if the stream had already ended."""
        fields = encode_event(event)
        entry_id = await append_final(
            self._redis, self._keys, self.request_id, fields, self._final_ttl_s
        )
        return entry_id is not None

    async def has_deltas(self) -> bool:
        """Whether any text was already written (by this or an earlier worker)."""
        return bool(await self._redis.hexists(self._keys.meta(self.request_id), "streamed"))

    async def has_ended(self) -> bool:
        return bool(await self._redis.hexists(self._keys.meta(self.request_id), "final_id"))

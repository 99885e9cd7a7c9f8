"""The stream entry FastStream's publish would ``XADD``, for a caller that writes it along with
other commands (a script, a pipeline of many entries): one round trip instead of one each."""

from __future__ import annotations

from typing import Any, cast

from faststream.redis import RedisBroker, RedisClusterBroker


class _Capture:
    """Stands in for the pipeline FastStream's publish may write to: keeps the entry."""

    fields: dict[str, Any] | None = None

    async def xadd(self, name: str, fields: dict[str, Any], maxlen: int | None = None) -> bytes:
        self.fields = fields
        return b""


async def entry_fields(broker: RedisBroker, body: Any) -> dict[Any, Any]:
    """The fields of the entry ``broker.publish(body, stream=...)`` would add.

    The publish runs for real, into a capture: a publish middleware added to the broker one
    day would count it (and its trace would name the stream ``-``). Not on a cluster: its
    broker ignores a pipeline (it would publish to ``-``)."""
    if isinstance(broker, RedisClusterBroker):
        raise TypeError("a cluster broker publishes past a pipeline; publish each entry")
    capture = _Capture()
    await broker.publish(body, stream="-", pipeline=cast(Any, capture))
    if capture.fields is None:
        raise RuntimeError("FastStream's publish wrote no stream entry")
    return capture.fields

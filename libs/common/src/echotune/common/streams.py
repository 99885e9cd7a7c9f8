"""Writing the final event of a chat stream: exactly once, whoever tries."""

from __future__ import annotations

from redis.asyncio import Redis

from echotune.common.keys import Keys

# KEYS: events stream, meta hash. ARGV: ttl seconds, then field/value pairs of the entry.
_APPEND_FINAL = """
if redis.call('HEXISTS', KEYS[2], 'final_id') == 1 then return false end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('HSET', KEYS[2], 'final_id', id)
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return id
"""


async def append_final(
    redis: Redis, keys: Keys, request_id: str, fields: dict[str, str], ttl_s: int
) -> str | None:
    """Append a ``done``/``error`` entry unless the stream already ended; its id, or ``None``."""
    args: list[str | int] = [ttl_s]
    for name, value in fields.items():
        args += [name, value]
    script = redis.register_script(_APPEND_FINAL)
    entry_id = await script(keys=[keys.events(request_id), keys.meta(request_id)], args=args)
    return str(entry_id) if entry_id else None

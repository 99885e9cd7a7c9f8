"""Waiting until replicas hold a write: ``WAIT`` on the write's own connection, then ``ROLE``.

``WAIT`` alone cannot tell a lagging replica from none: past its timeout it answers fewer,
and a write (or a relay read) counted then was lost to a failover with its replica online,
only lagging (the cluster chaos run, CI stop 48). ``ROLE`` says which replicas are online and
what each acknowledged: while enough are online the wait goes on, up to a deadline, against
the offset the first ``ROLE`` named (Redis before 7.2 moves a connection's own ``WAIT``
target with each ``WAIT``: repeating ``WAIT`` alone could chase it forever). With fewer
online, nothing can hold the write: the caller counts it unheld at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from echotune.common import resp

Exchange = Callable[[bytes, int], Awaitable[list[Any]]]
"""Send packed commands on the write's connection (never another): their replies."""


@dataclass(frozen=True, slots=True)
class Held:
    """How many replicas hold a write, how many were online when last asked, and what Redis
    refused of the wait (an ACL without ``WAIT`` or ``ROLE``: it cannot be waited for)."""

    holding: int
    online: int
    refused: Exception | None = None

    def why_not(self, replicas: int, max_ms: int) -> str:
        """Why fewer than ``replicas`` hold it, for a log line."""
        if self.refused is not None:
            return f"the wait was refused: {self.refused}"
        if self.online < replicas:
            return "too few replicas online"
        return f"still not held after {max_ms} ms"


def wait_and_role(replicas: int, wait_ms: int) -> list[tuple[int | str, ...]]:
    """``WAIT`` and ``ROLE``: sent right after the write, on its connection."""
    return [("WAIT", replicas, max(wait_ms, 1)), ("ROLE",)]


def commands(replicas: int, wait_ms: int) -> bytes:
    """:func:`wait_and_role`, packed."""
    return b"".join(resp.command(*c) for c in wait_and_role(replicas, wait_ms))


async def wait_longer(
    exchange: Exchange, acked: Any, role: Any, replicas: int, wait_ms: int, deadline: float
) -> Held:
    """After a write's ``WAIT`` (``acked``) and ``ROLE``: who holds it, asking again on
    ``exchange`` while fewer than ``replicas`` do, as many are online, and ``deadline`` (the
    loop's clock) is ahead; no wait runs past it."""
    target, loop = _offset(role), asyncio.get_running_loop()
    while True:
        refused = next((r for r in (acked, role) if isinstance(r, Exception)), None)
        if isinstance(acked, Exception):
            return Held(0, online_replicas(role), refused)
        held = Held(_holding(int(acked), role, target), online_replicas(role), refused)
        left_ms = int((deadline - loop.time()) * 1000)
        if held.holding >= replicas or held.online < replicas or left_ms <= 0:
            return held
        acked, role = await exchange(commands(replicas, min(wait_ms, left_ms)), 2)


def online_replicas(role: Any) -> int:
    """How many replicas a primary's ``ROLE`` reply lists (those online; 0 for any other,
    such as a ``ROLE`` refused)."""
    if isinstance(role, list) and len(role) >= 3 and role[0] in ("master", b"master"):
        return len(role[2])
    return 0


def _offset(role: Any) -> int:
    """The primary's replication offset ``ROLE`` names (past the write just made)."""
    return int(role[1]) if online_replicas(role) else 0


def _holding(acked: int, role: Any, target: int) -> int:
    """Replicas holding ``target``: as ``WAIT`` counted, or as ``ROLE`` lists them."""
    if not online_replicas(role):
        return acked
    listed = sum(1 for replica in role[2] if _acked_offset(replica) >= target)
    return max(acked, listed)


def _acked_offset(replica: Any) -> int:
    """A ``ROLE`` replica entry's acknowledged offset (``[ip, port, offset]``; -1 if not)."""
    try:
        return int(replica[2])
    except (TypeError, ValueError, IndexError):
        return -1

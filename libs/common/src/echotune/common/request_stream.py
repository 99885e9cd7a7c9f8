"""The per-request protocol: the only code that reads or writes a request's keys.

A request has four keys sharing the hash tag ``{request_id}`` (``keys.py``): its events
stream, its meta hash, its cancel flag and its reader marker. Every script here touches
only those, so each runs on one Redis Cluster slot.

Meta fields: ``fingerprint`` and ``user_id`` (who asked what), ``start_id``, ``epoch`` (0
until a worker takes the job, +1 at every take), ``taker`` (the current producer's fence: its
take's nonce), ``owner`` and ``entry`` (the current producer's consumer and the jobs entry it
took the job through; ``entry_taker`` is the take that recorded it), ``seq`` (the last entry
the current producer appended), ``streamed`` (text was written), ``final_id`` with
``final_fence``/``final_seq`` (the one final event, and who wrote it).

* The gateway **opens** a request in one script: claim, meta, start event, TTLs, reader
  marker - nothing half-done is ever visible. Identical input attaches to the same answer.
  Asked to, it waits until replicas hold the opening before telling the client (``WAIT``).
* A worker **takes** the job: a new fence (and epoch) fences off any earlier producer. Its
  appends carry (fence, seq): a stale producer is refused, a retried append is applied once.
  The fence is unique to the take, not the epoch: when Redis loses a take the epoch counts
  it again, and two producers would share it.
* The **final** event is written once; the TTLs shrink to the resume window with it. Asked
  to, its writer waits until replicas hold it, as for the opening: a final a failover lost
  after its job was acknowledged would leave the answer to the gateway's deadline.
* A producer's first entry, and the gateway's own final, name the take (field ``take``: the
  fence, or ``untaken``/``force``) when no text is stored before them: a relay that sent text
  before such an entry, with no ``discard_partial`` failover in it, knows the answer started
  over with no trace of that text (Redis lost the delivery, the take and the entries).
* A producer's next entry must follow the last one stored: a gap means Redis lost entries
  it had acknowledged (a failover's asynchronous replication), and the producer replays its
  answer behind a ``discard_partial`` failover (``worker/writer.py``).
* A **cancel** sets the flag and announces it; appends and the worker's sweep read the flag,
  so a lost announcement delays a cancel by about a second, never forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError

from echotune.common import replica_wait, resp
from echotune.common.keys import Keys
from echotune.common.messages import (
    SCHEMA_VERSION,
    ChatEvent,
    ErrorEvent,
    StartEvent,
    encode_event,
)
from echotune.common.scripts import Arg, Script, execute, execute_packed, load_all

log = logging.getLogger(__name__)

_OPEN = Script("""
local meta, events, reader = KEYS[1], KEYS[2], KEYS[3]
local m = redis.call('HMGET', meta, 'fingerprint', 'user_id', 'final_id', 'opener', 'start_id')
if m[1] then
  if m[4] == ARGV[8] then  -- this very call again: write, so that a WAIT after it waits
    redis.call('HSET', meta, 'opener', ARGV[8])
    return {'started', m[5]}
  end
  if m[2] ~= ARGV[2] then return {'foreign'} end
  if m[1] ~= ARGV[1] then return {'conflict'} end
  if not m[3] then redis.call('SET', reader, '1', 'PX', ARGV[4]) end
  return {'exists', m[3] or ''}
end
-- the job first: a script's error does not undo its earlier writes, so a job that cannot be
-- queued must leave no started request behind
if KEYS[4] then redis.call('XADD', KEYS[4], '*', unpack(ARGV, 11)) end
local id = redis.call('XADD', events, '*', 'v', ARGV[5], 'type', ARGV[6], 'data', ARGV[7])
redis.call('HSET', meta, 'fingerprint', ARGV[1], 'user_id', ARGV[2], 'start_id', id,
           'epoch', 0, 'seq', 0, 'opener', ARGV[8], 'provider', ARGV[9], 'model', ARGV[10])
redis.call('EXPIRE', meta, ARGV[3])
redis.call('EXPIRE', events, ARGV[3])
redis.call('SET', reader, '1', 'PX', ARGV[4])
return {'started', id}
""")

_ATTACH = Script("""
local m = redis.call('HMGET', KEYS[1], 'user_id', 'final_id', 'start_id', 'provider', 'model')
if m[1] ~= ARGV[1] then return {'unknown'} end
if not m[2] then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
return {'attached', m[2] or '', m[3] or '', m[4] or '', m[5] or '', newest and newest[1] or ''}
""")

# ARGV: owner, 'first' (a first delivery: only while nobody took the job) or 'again', the
# take's own nonce (a call retried after a lost reply finds its take done and returns it) and
# the jobs entry it came through. The nonce is the producer's fence: an epoch alone repeats
# once Redis lost a take. A duplicate is told who has the job, and through which entry.
TAKE = Script("""
local m = redis.call('HMGET', KEYS[1], 'fingerprint', 'final_id', 'streamed', 'epoch', 'taker')
if not m[1] then return {'gone'} end
if m[2] then return {'ended'} end
local epoch = m[4]
if m[5] ~= ARGV[3] then
  if ARGV[2] == 'first' and epoch ~= '0' then
    local has = redis.call('HMGET', KEYS[1], 'owner', 'entry', 'entry_taker')
    if has[3] ~= m[5] then has[2] = '' end  -- recorded by an earlier take
    return {'duplicate', has[1] or '', has[2] or '', m[5] or '', epoch}
  end
  epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('HSET', KEYS[1], 'seq', 0, 'owner', ARGV[1], 'taker', ARGV[3], 'entry', ARGV[4],
             'entry_taker', ARGV[3])
end
return {'taken', epoch, m[3] and 1 or 0, redis.call('EXISTS', KEYS[2]), ARGV[3]}
""")

# Appends of any number of requests (one on a cluster: their keys share no slot). KEYS:
# meta, events, cancel flag per request. ARGV: maxlen, schema version, then per request its
# producer's fence (its take's nonce), first seq, entry count and (type, data) per entry.
# Returns {written, cancelled} per request; written = -1 fenced, -2 ended, -3 gone, -4 lost
# (then the second number is the last seq stored: entries after it were acknowledged, then
# lost).
_APPEND = Script("""
local maxlen, version, out, a = ARGV[1], ARGV[2], {}, 3
for k = 1, #KEYS, 3 do
  local fence, first, count = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local entries = a + 3
  a = entries + 2 * count
  local m = redis.call('HMGET', KEYS[k], 'epoch', 'seq', 'final_id', 'streamed', 'taker')
  local written, cancelled = 0, 0
  if not m[1] then written = -3
  elseif m[3] then written = -2
  elseif m[5] ~= fence then written = -1
  elseif first > tonumber(m[2]) + 1 then written, cancelled = -4, tonumber(m[2])
  else
    local last, streamed = tonumber(m[2]), false
    for i = 0, count - 1 do
      local e = entries + 2 * i
      if first + i > last then
        if first + i == 1 and not m[4] then  -- see TAKE_FIELD
          redis.call('XADD', KEYS[k + 1], 'MAXLEN', '~', maxlen, '*',
                     'v', version, 'type', ARGV[e], 'data', ARGV[e + 1], 'take', fence)
        else
          redis.call('XADD', KEYS[k + 1], 'MAXLEN', '~', maxlen, '*',
                     'v', version, 'type', ARGV[e], 'data', ARGV[e + 1])
        end
        last, written = first + i, written + 1
        if ARGV[e] == 'delta' then streamed = true end
      end
    end
    if streamed and not m[4] then
      redis.call('HSET', KEYS[k], 'seq', last, 'streamed', 1)
    elseif written > 0 then
      redis.call('HSET', KEYS[k], 'seq', last)
    end
    cancelled = redis.call('EXISTS', KEYS[k + 2])
  end
  out[#out + 1] = written
  out[#out + 1] = cancelled
end
return out
""")

# ARGV: fence, seq, ttl, version, type, data[, the data when text was streamed]. The
# fence 'untaken' writes only while no worker took the job; 'force' fences off whoever holds
# it (the gateway ending an answer that is cancelled, late or lost). A producer's final whose
# seq does not follow the last entry stored is 'lost' (its entries were lost: it replays).
_FINAL = Script("""
local meta, events, flag, reader = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local m = redis.call('HMGET', meta, 'epoch', 'final_id', 'final_fence', 'final_seq', 'streamed',
                     'seq', 'taker')
if not m[1] then return {'gone'} end
if m[2] then
  if m[3] == ARGV[1] and m[4] == ARGV[2] then  -- this very final again (see _OPEN)
    redis.call('HSET', meta, 'final_seq', ARGV[2])
    return {'written', m[2]}
  end
  return {'ended', m[2]}
end
if ARGV[1] == 'untaken' then
  if m[1] ~= '0' then return {'taken'} end
elseif ARGV[1] == 'force' then
  redis.call('HINCRBY', meta, 'epoch', 1)
elseif m[7] ~= ARGV[1] then
  return {'fenced'}
elseif tonumber(ARGV[2]) > tonumber(m[6]) + 1 then
  return {'lost'}
end
local data = ARGV[6]
if ARGV[7] and m[5] then data = ARGV[7] end
local id
if tonumber(ARGV[2]) <= 1 and not m[5] then  -- see TAKE_FIELD (seq 0: the gateway's own)
  id = redis.call('XADD', events, '*', 'v', ARGV[4], 'type', ARGV[5], 'data', data, 'take', ARGV[1])
else
  id = redis.call('XADD', events, '*', 'v', ARGV[4], 'type', ARGV[5], 'data', data)
end
redis.call('HSET', meta, 'final_id', id, 'final_fence', ARGV[1], 'final_seq', ARGV[2])
for _, key in ipairs({meta, events, flag, reader}) do
  if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ARGV[3]) end
end
return {'written', id}
""")

_CANCEL = Script("""
local m = redis.call('HMGET', KEYS[1], 'user_id', 'final_id', 'epoch', 'provider', 'model',
                     'start_id')
if m[1] ~= ARGV[1] then return {'unknown'} end
if m[2] then return {'finished'} end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {'cancelling', m[3], m[4] or '', m[5] or '', m[6] or ''}
""")

SCRIPTS = (_OPEN, _ATTACH, TAKE, _APPEND, _FINAL, _CANCEL)
TAKE_FIELD = "take"
"""The field naming the take on an entry written with no text stored before it (a producer's
first, the gateway's own final): a reader that holds text of the answer lost it with a take."""


class Opened(StrEnum):
    STARTED = "started"
    EXISTS = "exists"
    CONFLICT = "conflict"
    FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class OpenResult:
    state: Opened
    start_id: str = ""
    final_id: str | None = None
    job_queued: bool = False
    """The job given to :meth:`RequestStreams.open` was queued with the start."""
    unreplicated: bool = False
    """Fewer replicas than asked held the opening (too few online, or past the wait): a
    failover may lose it."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the gateway needs to know of a request before opening it."""

    fingerprint: str | None
    user_id: str | None
    final_id: str | None

    def same(self, fingerprint: str, user_id: str) -> bool:
        return self.fingerprint == fingerprint and self.user_id == user_id


class Take(StrEnum):
    TAKEN = "taken"
    ENDED = "ended"
    GONE = "gone"
    DUPLICATE = "duplicate"
    """Someone else has the job: this is a second entry of it (its publication was retried),
    or its entry delivered again (the jobs stream lost the delivery)."""


@dataclass(frozen=True, slots=True)
class Attached:
    """A request a reader attached to: its start event's id, its final's (if written), the
    provider and model it started with, and its newest event's id."""

    start_id: str
    final_id: str | None = None
    provider: str = ""
    model: str = ""
    newest_id: str = ""
    """Its newest event's id when it attached (``""``: no event)."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A worker's hold on a job: its epoch (how many takes), its fence (what its appends and
    final carry: unique to this take), and what the stream already holds."""

    state: Take
    epoch: int = 0
    streamed: bool = False
    cancelled: bool = False
    fence: str = ""
    """A duplicate's fence and epoch are the take's that has the job."""
    owner: str = ""
    """For a duplicate: the consumer that has the job ("" if not known)."""
    entry: str = ""
    """For a duplicate: the jobs entry that consumer took it through ("" if not known)."""
    at: float = field(default_factory=time.time)
    """When this worker learnt of the take (its wall clock): orders two takes of one epoch."""


class AppendRefused(StrEnum):
    FENCED = "fenced"
    ENDED = "ended"
    GONE = "gone"


_REFUSALS = {-1: AppendRefused.FENCED, -2: AppendRefused.ENDED, -3: AppendRefused.GONE}
_LOST = -4


@dataclass(frozen=True, slots=True)
class Appended:
    refused: AppendRefused | None
    cancelled: bool
    stored_seq: int | None = None
    """Set when entries were lost: the producer's last entry Redis still holds."""


class Final(StrEnum):
    WRITTEN = "written"
    ENDED = "ended"
    FENCED = "fenced"
    TAKEN = "taken"
    GONE = "gone"
    LOST = "lost"
    """Entries the producer appended were lost: it replays them before its final."""


UNTAKEN = "untaken"
"""The fence of a final written by the gateway: only while no worker took the job."""
FORCE = "force"
"""The fence of a final the gateway writes over whoever holds the job (it is fenced off)."""


@dataclass(frozen=True, slots=True)
class Cancel:
    """What a cancel found: ``unknown``, ``finished`` or ``cancelling`` (and the answer's)."""

    state: str
    taken: bool = False
    provider: str = ""
    model: str = ""
    start_id: str = ""


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries (type, data) one producer appends to one request, numbered from ``first_seq``."""

    request_id: str
    fence: str
    first_seq: int
    entries: Sequence[tuple[str, str]]


def _appended(reply: Sequence[Any], at: int) -> Appended:
    """The result of the batch whose pair of numbers starts at ``reply[at]``."""
    written, second = int(reply[at]), int(reply[at + 1])
    if written == _LOST:
        return Appended(None, False, stored_seq=second)
    return Appended(_REFUSALS.get(written), bool(second))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_KEY_OF: dict[str, Callable[[Keys, str], str]] = {
    "meta": Keys.meta,
    "events": Keys.events,
    "cancel": Keys.cancel_flag,
    "reader": Keys.reader,
}


class ReadBarrier:
    """Commands sent after reads of a request's slot, on the same connection, and the wait
    for what they saw to be held before it goes to clients (``replica_wait``).

    Why: the relay read entries a failover then lost (Redis acknowledged them before any
    replica held them), and its client kept an event no one stored (the cluster chaos run's
    ``event_ids`` violation: a final relayed, lost, then written again under another id). A
    write of the request's ``relayed`` mark, ordered after what was read, is what the
    ``WAIT`` waits for (a connection that wrote nothing has nothing to wait for); ``ROLE``
    says whether a replica that did not answer in time is online, only lagging: then the
    reads wait for it, ``max_ms`` at most (CI, stop 48: handed out once the wait ran out,
    and lost).
    """

    LOG_EVERY_S = 60.0
    MARK_TTL_MS = 10_000

    def __init__(
        self,
        keys: Keys,
        replicas: int,
        wait_ms: int,
        max_ms: int,
        on_unheld: Callable[[], None] | None = None,
        on_held_back: Callable[[], None] | None = None,
    ) -> None:
        self.keys, self.replicas, self.wait_ms, self.max_ms = keys, replicas, wait_ms, max_ms
        self._on_unheld, self._on_held_back = on_unheld, on_held_back
        self.unheld = 0
        """Reads handed out before enough replicas held them."""
        self.held_back = 0
        """Reads that waited past their first wait for an online replica."""
        self._logged_at = -self.LOG_EVERY_S

    def commands(self, request_id: str, *, asking: bool = False) -> list[tuple[Arg, ...]]:
        """For reads on ``request_id``'s slot (``asking``: a slot migrating to that node)."""
        mark = ("SET", self.keys.relayed(request_id), "1", "PX", self.MARK_TTL_MS)
        wait = replica_wait.wait_and_role(self.replicas, self.wait_ms)
        return [("ASKING",), mark, *wait] if asking else [mark, *wait]

    async def settle(
        self, replies: Sequence[Any], again: replica_wait.Exchange, *, handing_out: bool
    ) -> None:
        """Return once the reads (``replies``: their barrier's) may go to clients: enough
        replicas hold them; or, having waited on ``again`` for online ones that lag (until
        ``max_ms`` since the read), fewer do, or the mark or the wait was refused (out of
        memory, a slot migrating: ``ASK``, an ACL): counted and logged. A moved slot raises
        (the mark was written nowhere and the reads' node no longer serves it), as does a
        connection lost meanwhile: read again."""
        for reply in replies:
            if isinstance(reply, MovedError):  # not ASK, its base class in redis-py
                raise reply
        if not handing_out:
            return
        mark, acked, role = replies[-3:]
        if isinstance(mark, Exception):
            self._unheld(f"the mark was refused: {mark}")
            return
        if not isinstance(acked, Exception) and int(acked) >= self.replicas:
            return
        if replica_wait.online_replicas(role) >= self.replicas:
            self.held_back += 1
            if self._on_held_back is not None:
                self._on_held_back()
        left_s = (self.max_ms - self.wait_ms) / 1000  # the first wait is spent
        deadline = asyncio.get_running_loop().time() + left_s
        held = await replica_wait.wait_longer(
            again, acked, role, self.replicas, self.wait_ms, deadline
        )
        if held.holding < self.replicas:
            self._unheld(held.why_not(self.replicas, self.max_ms))

    def _unheld(self, why: str) -> None:
        self.unheld += 1
        if self._on_unheld is not None:
            self._on_unheld()
        if (now := time.monotonic()) - self._logged_at >= self.LOG_EVERY_S:
            self._logged_at = now
            log.warning("relayed reads before %d replicas held them (%s; %d so far)",
                        self.replicas, why, self.unheld)  # fmt: skip


class RequestStreams:
    """The per-request protocol of one namespace."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        request_ttl_s: int,
        final_ttl_s: int,
        reader_ttl_ms: int,
        events_maxlen: int = 10_000,
        wait_replicas: int = 0,
        wait_ms: int = 500,
        wait_max_ms: int = 3000,
        on_unreplicated_final: Callable[[], None] | None = None,
    ) -> None:
        self.redis, self.keys = redis, keys
        self.request_ttl_s, self.final_ttl_s = request_ttl_s, final_ttl_s
        self.reader_ttl_ms, self.events_maxlen = reader_ttl_ms, events_maxlen
        self.wait_replicas, self.wait_ms, self.wait_max_ms = wait_replicas, wait_ms, wait_max_ms
        self._on_unreplicated_final = on_unreplicated_final

    async def load_scripts(self) -> None:
        """Load every script up front (they are reloaded on ``NOSCRIPT`` anyway)."""
        await load_all(self.redis, SCRIPTS)

    def read_barrier(
        self,
        wait_ms: int,
        on_unheld: Callable[[], None] | None = None,
        on_held_back: Callable[[], None] | None = None,
    ) -> ReadBarrier | None:
        """What makes a relay hand out only what ``wait_replicas`` replicas hold (none
        without them), ``wait_ms`` a wait, ``wait_max_ms`` in all; ``on_unheld`` counts reads
        handed out before they held it, ``on_held_back`` reads that waited for a lagging one."""
        if not self.wait_replicas:
            return None
        return ReadBarrier(
            self.keys, self.wait_replicas, wait_ms, self.wait_max_ms, on_unheld, on_held_back
        )

    def events_key(self, request_id: str) -> str:
        return self.keys.events(request_id)

    def _keys(self, request_id: str, *names: str) -> list[str]:
        return [_KEY_OF[name](self.keys, request_id) for name in names]

    # --- gateway ------------------------------------------------------------------------

    def queue_lookup(self, pipe: Pipeline, request_id: str) -> None:
        pipe.hmget(self.keys.meta(request_id), ["fingerprint", "user_id", "final_id"])

    @staticmethod
    def lookup(reply: Sequence[Any]) -> Lookup:
        fingerprint, user_id, final_id = (None if v is None else _text(v) for v in reply)
        return Lookup(fingerprint, user_id, final_id)

    @property
    def queues_jobs(self) -> bool:
        """Whether :meth:`open` queues a job given to it (one Redis; not a cluster)."""
        return not isinstance(self.redis, RedisCluster)

    async def open(
        self,
        request_id: str,
        fingerprint: str,
        user_id: str,
        start: StartEvent,
        job: tuple[str, Sequence[str | bytes]] | None = None,
    ) -> OpenResult:
        """Claim ``request_id`` and write its start event, atomically (or find it taken).

        A nonce tells a retry of this very call (its reply was lost) from an identical
        request: the retry answers ``started`` again. ``job`` (stream, flat fields): an entry
        queued with the start, on one Redis (a cluster keeps the jobs stream in another slot;
        ``job_queued`` says whether it was).

        With ``wait_replicas``, the opening is started only once that many replicas hold it
        (or ``wait_ms`` passed): Redis replicates asynchronously, and a failover that lost an
        opening after its job was queued would leave a started answer nobody can end.
        """
        fields = encode_event(start)
        keys = self._keys(request_id, "meta", "events", "reader")
        args: list[Arg] = [
            fingerprint,
            user_id,
            self.request_ttl_s,
            self.reader_ttl_ms,
            fields["v"],
            fields["type"],
            fields["data"],
            uuid.uuid4().hex,
            start.provider,
            start.model,
        ]
        queued = job is not None and self.queues_jobs
        if job is not None and queued:
            keys.append(job[0])
            args += job[1]
        reply, unreplicated = await self._replicated(_OPEN, keys, args)
        state = Opened(_text(reply[0]))
        if state is Opened.STARTED:
            return OpenResult(state, _text(reply[1]), job_queued=queued, unreplicated=unreplicated)
        if state is Opened.EXISTS:
            return OpenResult(state, final_id=_text(reply[1]) or None)
        return OpenResult(state)

    async def attach(self, request_id: str, user_id: str) -> Attached | None:
        """The request as ``user_id`` may read it (``None``: unknown to them); refreshes the
        reader."""
        reply = await _ATTACH(
            self.redis,
            self._keys(request_id, "meta", "reader", "events"),
            [user_id, self.reader_ttl_ms],
        )
        if _text(reply[0]) != "attached":
            return None
        final_id, start_id, provider, model, newest_id = (_text(value) for value in reply[1:])
        return Attached(start_id, final_id or None, provider, model, newest_id)

    async def cancel(self, request_id: str, user_id: str) -> Cancel:
        """Set the cancel flag and announce it (unless unknown to ``user_id`` or finished)."""
        reply = await _CANCEL(
            self.redis,
            self._keys(request_id, "meta", "cancel"),
            [user_id, self.request_ttl_s, self.keys.cancel_channel, request_id],
        )
        state = _text(reply[0])
        if state != "cancelling":
            return Cancel(state)
        provider, model, start_id = (_text(v) for v in reply[2:5])
        return Cancel(state, int(reply[1]) > 0, provider, model, start_id)

    def queue_reader_refresh(self, pipe: Pipeline, request_id: str) -> None:
        pipe.set(self.keys.reader(request_id), "1", px=self.reader_ttl_ms)

    async def reader_left(self, request_id: str) -> None:
        """A reader left: the resume window starts now (the answer goes on that long)."""
        await self.redis.set(self.keys.reader(request_id), "1", px=self.reader_ttl_ms, xx=True)

    # --- worker ---------------------------------------------------------------------------

    async def take(
        self, request_id: str, owner: str, *, first: bool = False, entry: str = ""
    ) -> Taken:
        """Become the job's producer: a new fence that fences off every earlier one.

        ``first``: the entry is delivered for the first time, so a job someone already took
        is a duplicate entry, not one to take over (only a reclaimed entry takes over).
        ``entry``: the jobs entry the job came through, told to a duplicate's taker.
        """
        args = self._take_args(owner, first, entry)
        return self.taken(await TAKE(self.redis, self._keys(request_id, "meta", "cancel"), args))

    def queue_take(
        self, pipe: Pipeline, request_id: str, owner: str, *, first: bool, entry: str
    ) -> None:
        """Queue :meth:`take` (script :data:`TAKE`, one reply read by :meth:`taken`)."""
        keys = self._keys(request_id, "meta", "cancel")
        TAKE.queue(pipe, keys, self._take_args(owner, first, entry))

    @staticmethod
    def _take_args(owner: str, first: bool, entry: str) -> list[Arg]:
        return [owner, "first" if first else "again", uuid.uuid4().hex, entry]

    @staticmethod
    def taken(reply: Sequence[Any]) -> Taken:
        """The reply of a take."""
        state = Take(_text(reply[0]))
        if state is Take.DUPLICATE:
            owner, entry, fence, epoch = _text(reply[1]), _text(reply[2]), _text(reply[3]), reply[4]
            return Taken(state, int(epoch), fence=fence, owner=owner, entry=entry)
        if state is not Take.TAKEN:
            return Taken(state)
        epoch, streamed, cancelled = int(reply[1]), bool(int(reply[2])), bool(int(reply[3]))
        return Taken(state, epoch, streamed, cancelled, _text(reply[4]))

    def own_connection(self) -> resp.OwnConnection | None:
        """A connection for :meth:`append_many` of one appender (``None`` on a cluster)."""
        return None if isinstance(self.redis, RedisCluster) else resp.OwnConnection(self.redis)

    async def append_many(
        self, batches: Sequence[Batch], own: resp.OwnConnection | None = None
    ) -> list[Appended | Exception]:
        """Append each batch's entries in one round trip (for many requests).

        Entry ``i`` of a batch has sequence number ``first_seq + i``: a retried batch is
        applied once, and a producer whose fence is no longer current is refused. One Redis
        runs one script call for them all (on ``own`` connection if given); a cluster, one
        per batch (routed by slot).
        """
        if not batches:
            return []
        head: list[Arg] = [self.events_maxlen, SCHEMA_VERSION]
        if isinstance(self.redis, RedisCluster):
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch in batches:
                    _APPEND.queue(pipe, self._append_keys(batch), [*head, *self._args(batch)])
                replies = await execute(self.redis, pipe, [_APPEND] * len(batches))
            return [r if isinstance(r, Exception) else _appended(r, 0) for r in replies]
        keys = [key for batch in batches for key in self._append_keys(batch)]
        args = head + [arg for batch in batches for arg in self._args(batch)]
        [reply] = await execute_packed(self.redis, _APPEND, [(keys, args)], own)
        if not isinstance(reply, Exception):
            return [_appended(reply, 2 * i) for i in range(len(batches))]
        if len(batches) == 1:
            return [reply]
        # An error reply: one call per batch, so one failing request fails alone (what the
        # failed call applied is skipped by sequence number).
        calls = [(self._append_keys(b), [*head, *self._args(b)]) for b in batches]
        replies = await execute_packed(self.redis, _APPEND, calls, own)
        return [r if isinstance(r, Exception) else _appended(r, 0) for r in replies]

    def _append_keys(self, batch: Batch) -> list[str]:
        k, request_id = self.keys, batch.request_id  # for every request of every flush
        return [k.meta(request_id), k.events(request_id), k.cancel_flag(request_id)]

    @staticmethod
    def _args(batch: Batch) -> list[Arg]:
        args: list[Arg] = [batch.fence, batch.first_seq, len(batch.entries)]
        for kind, data in batch.entries:
            args += [kind, data]
        return args

    async def append_final(self, request_id: str, fence: str, seq: int, event: ChatEvent) -> Final:
        """Write the final event, once, as the producer of ``fence`` (:data:`UNTAKEN` or
        :data:`FORCE` for the gateway's own). An error says ``partial`` whenever text was
        streamed in the answer, whatever ``event.partial`` says: the script decides, so no
        token slips in between. A final written before ``wait_replicas`` replicas held it
        calls ``on_unreplicated_final`` (a metric's count, which must not raise): counted here,
        not by each of the callers of both services."""
        fields = encode_event(event)
        args: list[Arg] = [
            fence,
            seq,
            self.final_ttl_s,
            fields["v"],
            fields["type"],
            fields["data"],
        ]
        if isinstance(event, ErrorEvent) and not event.partial:
            args.append(encode_event(event.model_copy(update={"partial": True}))["data"])
        keys = self._keys(request_id, "meta", "events", "cancel", "reader")
        reply, unreplicated = await self._replicated(_FINAL, keys, args)
        outcome = Final(_text(reply[0]))
        if unreplicated and outcome is Final.WRITTEN:
            log.warning("the final of %s is not on enough replicas yet", request_id)
            if self._on_unreplicated_final is not None:
                self._on_unreplicated_final()
        return outcome

    async def _replicated(
        self, script: Script, keys: list[str], args: list[Arg]
    ) -> tuple[Any, bool]:
        """Run ``script``, then wait for ``wait_replicas`` replicas to hold what it wrote;
        (its reply, whether fewer held it: too few online, or past ``wait_max_ms``)."""
        if not self.wait_replicas:
            return await script(self.redis, keys, args), False
        reply, acked = await script.replicated(
            self.redis, keys, args, self.wait_replicas, self.wait_ms, self.wait_max_ms
        )
        return reply, acked < self.wait_replicas

    async def fences(self, request_ids: Sequence[str]) -> list[str | None]:
        """Each request's current producer's fence (``None``: nobody took it, or it is gone)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.hget(self.keys.meta(request_id), "taker")
            replies = await pipe.execute()
        return [None if reply is None else _text(reply) for reply in replies]

    async def current_take(self, request_id: str) -> tuple[str, str, int]:
        """The take that has the job now: its fence, the jobs entry it came through (if it
        recorded one) and its epoch; ``("", "", 0)`` when the request is gone."""
        fields = ["taker", "entry", "entry_taker", "epoch"]
        meta = self.keys.meta(request_id)
        taker, entry, entry_taker, epoch = await self.redis.hmget(meta, fields)
        fence = "" if taker is None else _text(taker)
        through = _text(entry) if entry is not None and entry_taker == taker else ""
        return fence, through, int(epoch or 0)

    async def stored_seq(self, request_id: str) -> int:
        """The current producer's last entry Redis holds (after a :data:`Final.LOST`)."""
        return int(await self.redis.hget(self.keys.meta(request_id), "seq") or 0)

    def queue_probe(self, pipe: Pipeline, request_id: str) -> None:
        """Queue: is a reader attached, was a cancel asked (two replies)."""
        pipe.exists(self.keys.reader(request_id))
        pipe.exists(self.keys.cancel_flag(request_id))

"""The plan of a chaos run: every request, its upstream script and every fault, drawn from the
seed before anything runs (the same seed always gives the same plan)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

# name, kind (wire format) and model of each provider; all are served by the fake upstream
PROVIDERS = (("alpha", "openai"), ("beta", "anthropic"), ("gamma", "gemini"))
KINDS = ("sse_get", "sse_post", "v1_stream", "v1_plain")
SSE_KINDS = ("sse_get", "sse_post")
FAULT_KINDS = (
    "worker_kill",  # SIGKILL a worker, restart it
    "worker_term",  # SIGTERM a worker (it drains), restart it
    "gateway_kill",  # SIGKILL a gateway, restart it on the same port
    "redis_restart",  # SIGTERM Redis (AOF written), start it again: nothing lost
    "redis_kill",  # SIGKILL Redis with appendfsync always, start it again: nothing acked lost
    "mongo_restart",  # stop the MongoDB server, start it again a few seconds later
    "breaker_trip",  # the fake upstream answers 503 to one provider's model for a while
)
# On a Redis Cluster (--redis-cluster) a Redis fault is a failover: SIGKILL a primary, its
# replica takes over, the killed node comes back as a replica.
CLUSTER_FAULT_KINDS = (
    *(k for k in FAULT_KINDS if k not in ("redis_restart", "redis_kill")),
    "redis_failover",
)
WORDS = (
    "amber", "bass", "cello", "drum", "echo", "flute", "groove", "harp", "indie", "jazz",
    "kora", "lute", "mellow", "noise", "oboe", "piano", "quiet", "reed", "swing", "tempo",
)  # fmt: skip
PROMPTS = (
    "music for a rainy evening", "three albums to focus", "something like Nick Drake",
    "a playlist for a long drive", "jazz for beginners", "songs about the sea",
)  # fmt: skip


PRIMARIES = 3  # of the local Redis Cluster of a --redis-cluster run


def model_of(provider: str) -> str:
    return f"{provider}-model"


@dataclass(frozen=True)
class CancelPlan:
    """When the client asks to stop: at the ``start`` event, after some deltas, or some ms
    after the ``start`` event; sent to gateway ``gateway``."""

    trigger: str  # after_start | after_deltas | after_ms
    value: int
    gateway: int


@dataclass(frozen=True)
class DisconnectPlan:
    """Close the connection once the session has seen ``after_events`` events, come back
    ``gap_ms`` later on the other gateway with ``Last-Event-ID``."""

    after_events: int
    gap_ms: int


@dataclass(frozen=True)
class RequestPlan:
    index: int
    request_id: str
    at_s: float
    kind: str
    gateway: int
    provider: str | None  # None: the default provider
    message: str
    conversation_id: str | None  # an ongoing conversation: the worker reads its context
    max_tokens: int | None
    steps: list[dict[str, Any]]  # the fake upstream's script for this request id
    cancel: CancelPlan | None = None
    disconnects: list[DisconnectPlan] = field(default_factory=list)
    duplicate_after_ms: int | None = None  # a second client starts the same request
    duplicate_gateway: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestPlan:
        cancel = CancelPlan(**data["cancel"]) if data.get("cancel") else None
        disconnects = [DisconnectPlan(**d) for d in data.get("disconnects", [])]
        return cls(**{**data, "cancel": cancel, "disconnects": disconnects})


@dataclass(frozen=True)
class FaultPlan:
    index: int
    at_s: float
    kind: str
    target: int  # worker slot, gateway index or provider index
    down_s: float  # how long the target stays down (outage length for breaker_trip)


@dataclass(frozen=True)
class Plan:
    seed: int
    duration_s: float
    requests: list[RequestPlan]
    faults: list[FaultPlan]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            seed=data["seed"],
            duration_s=data["duration_s"],
            requests=[RequestPlan.from_dict(r) for r in data["requests"]],
            faults=[FaultPlan(**f) for f in data["faults"]],
        )


def make_plan(
    seed: int,
    duration_s: float,
    *,
    rate: float = 1.2,
    workers: int = 3,
    gateways: int = 2,
    fault_kinds: tuple[str, ...] = FAULT_KINDS,
) -> Plan:
    """Requests arrive as a Poisson process of ``rate`` per second with occasional bursts
    (which fill the workers' slots); a fault every 4–9 s, every kind of ``fault_kinds`` once
    before any repeats."""
    rng = random.Random(seed)
    requests: list[RequestPlan] = []
    t = 0.5
    while t < duration_s:
        for _ in range(rng.randint(6, 10) if rng.random() < 0.06 else 1):
            requests.append(_request(rng, seed, len(requests), t, gateways))
        t += rng.expovariate(rate)
    faults = _faults(rng, duration_s, workers, gateways, fault_kinds)
    return Plan(seed, duration_s, requests, faults)


def _request(rng: random.Random, seed: int, index: int, at_s: float, gateways: int) -> RequestPlan:
    kind = rng.choices(KINDS, weights=(35, 25, 20, 20))[0]
    provider = rng.choices([None, "alpha", "beta", "gamma"], weights=(50, 20, 20, 10))[0]
    sse = kind in SSE_KINDS
    cancel = disconnects = duplicate = None
    if sse and rng.random() < 0.25:
        trigger = rng.choices(("after_start", "after_deltas", "after_ms"), weights=(3, 4, 3))[0]
        value = {"after_start": 0, "after_deltas": rng.randint(1, 10)}.get(
            trigger, rng.randint(30, 1500)
        )
        cancel = CancelPlan(trigger, value, rng.randrange(gateways))
    if sse and rng.random() < 0.3:
        marks = sorted(rng.sample(range(1, 14), rng.choice((1, 1, 2))))
        disconnects = [DisconnectPlan(m, rng.randint(50, 1500)) for m in marks]
    if sse and rng.random() < 0.15:
        duplicate = rng.randint(0, 800)
    return RequestPlan(
        index=index,
        request_id=f"chaos-{seed}-{index:05d}",
        at_s=round(at_s, 3),
        kind=kind,
        gateway=rng.randrange(gateways),
        provider=provider,
        message=f"chaos {index}: {rng.choice(PROMPTS)}",
        conversation_id=f"conv-{seed}-{rng.randrange(5)}" if sse and rng.random() < 0.3 else None,
        max_tokens=rng.randint(3, 10) if kind != "sse_get" and rng.random() < 0.1 else None,
        steps=_steps(rng),
        cancel=cancel,
        disconnects=disconnects or [],
        duplicate_after_ms=duplicate,
        duplicate_gateway=rng.randrange(gateways),
    )


def _steps(rng: random.Random) -> list[dict[str, Any]]:
    """Upstream faults for the first attempts, then the answer (the last step repeats)."""
    faults = rng.choices((0, 1, 2), weights=(60, 30, 10))[0]
    return [_fault_step(rng) for _ in range(faults)] + [_answer_step(rng)]


def _tokens(rng: random.Random) -> list[str]:
    return [f"{rng.choice(WORDS)}{i} " for i in range(rng.randint(8, 40))]


def _answer_step(rng: random.Random) -> dict[str, Any]:
    slow = rng.random() < 0.15
    ttft = rng.randint(600, 1500) if slow else rng.randint(0, 200)
    return {"tokens": _tokens(rng), "pace_ms": rng.randint(10, 50), "ttft_ms": ttft}


def _fault_step(rng: random.Random) -> dict[str, Any]:
    kind = rng.choices(
        (
            "rate_limited",
            "server_error",
            "stall_first",
            "stall_mid",
            "reset_first",
            "reset_mid",
            "first_token_timeout",
            "malformed",
        ),
        weights=(25, 25, 8, 8, 10, 8, 8, 8),
    )[0]
    answer = _answer_step(rng)
    if kind == "rate_limited":
        return {"status": 429, "retry_after": str(round(rng.uniform(0.2, 1.5), 1))}
    if kind == "server_error":
        return {"status": rng.choice((500, 502, 503))}
    if kind in ("stall_first", "stall_mid"):
        return {**answer, "hang_after": 0 if kind == "stall_first" else rng.randint(1, 6)}
    if kind in ("reset_first", "reset_mid"):
        return {**answer, "disconnect_after": 0 if kind == "reset_first" else rng.randint(1, 6)}
    if kind == "first_token_timeout":
        return {**answer, "ttft_ms": 3500}
    return {**answer, "malformed_after": rng.randint(0, 6)}


def _faults(
    rng: random.Random, duration_s: float, workers: int, gateways: int, fault_kinds: tuple[str, ...]
) -> list[FaultPlan]:
    faults: list[FaultPlan] = []
    kinds: list[str] = []
    t = rng.uniform(3, 6)
    while t < duration_s - 3:
        if not kinds:
            kinds = rng.sample(fault_kinds, len(fault_kinds))
        kind = kinds.pop()
        target = {
            "worker_kill": workers,
            "worker_term": workers,
            "gateway_kill": gateways,
            "breaker_trip": len(PROVIDERS),
            "redis_failover": PRIMARIES,
        }.get(kind, 1)
        down = rng.uniform(4, 8) if kind == "breaker_trip" else rng.uniform(0.5, 3.0)
        faults.append(FaultPlan(len(faults), round(t, 3), kind, rng.randrange(target), down))
        t += rng.uniform(4, 9)
    return faults

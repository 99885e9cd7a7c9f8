"""The real stack of a chaos run, as processes on 127.0.0.1, with the faults it can suffer.

Redis runs with an append-only file and ``appendfsync always``: a graceful restart and a
``kill -9`` both keep every acknowledged write. Losing data (``everysec``, no persistence) is a
different fault, "Redis lost data", that this run does not inject.

With ``cluster=True`` Redis is a local Redis Cluster (3 primaries, a replica each) and its
fault is a failover: a primary is SIGKILLed, its replica takes over, it comes back as a replica.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from deploy.chaos.history import ProcessLife, now_ns
from deploy.chaos.plan import PROVIDERS, model_of
from deploy.local.processes import (
    ServiceProcess,
    start_fake_llm,
    start_gateway,
    start_telemetry,
    start_worker,
)
from deploy.local.servers import RedisClusterServers, RedisServer, SecantusServer, free_port
from echotune.common.keys import JOBS_GROUP, Keys
from echotune.common.redis import create_redis, is_cluster

NAMESPACE = "chaos"
TIMEOUTS = {"connect": 2, "first_token": 3, "idle": 2, "total": 15}
# Settings that make the faults' consequences happen within a short run; documented in the report.
TUNING = {
    "ECHOTUNE_RESUME_WINDOW_S": "5",
    "ECHOTUNE_GATEWAY_HEARTBEAT_S": "1",
    "ECHOTUNE_GATEWAY_MAX_STREAM_S": "20",
    "ECHOTUNE_GATEWAY_JOBS_TRIM_S": "5",
    "ECHOTUNE_WORKER_CONCURRENCY": "2",
    "ECHOTUNE_WORKER_RECLAIM_IDLE_S": "3",
    "ECHOTUNE_WORKER_DRAIN_S": "3",
    "ECHOTUNE_WORKER_READER_CHECK_S": "0.5",
    "ECHOTUNE_WORKER_RETRY_BASE_S": "0.1",
    "ECHOTUNE_WORKER_RETRY_CAP_S": "1",
    "ECHOTUNE_WORKER_RETRY_AFTER_CAP_S": "3",
    "ECHOTUNE_WORKER_TELEMETRY_MAXLEN": "1000",
    "ECHOTUNE_BREAKER_COOLDOWN_S": "3",
    "ECHOTUNE_BREAKER_COOLDOWN_CAP_S": "10",
    "ECHOTUNE_BREAKER_WINDOW_S": "20",
    "ECHOTUNE_BREAKER_PROBE_TIMEOUT_S": "10",
    "ECHOTUNE_TELEMETRY_RETRY_CAP_S": "1",
    "ECHOTUNE_TELEMETRY_MONGO_TIMEOUT_MS": "1000",
}
# On a cluster a failover keeps the jobs stream's slot unwritable for the node timeout (2 s)
# plus an election (3.3-5 s measured): the reclaim period exceeds it, as the README says.
# Replicas hold a chat's opening and final before they count (a failover rarely loses them).
CLUSTER_TUNING = {
    **TUNING,
    "ECHOTUNE_WORKER_RECLAIM_IDLE_S": "8",
    "ECHOTUNE_REDIS_WAIT_REPLICAS": "1",
}
UNLIMITED = "1000000"
# Redis records each time its main thread was blocked this long (ms): with `appendfsync always`
# an fsync waits for the disk, which the SecantusDB restarts share (222 ms measured while idle).
_LATENCY_MONITOR = ("--latency-monitor-threshold", "100")


def tuning(cluster: bool) -> dict[str, str]:
    return CLUSTER_TUNING if cluster else TUNING


def stack_env(redis_url: str, mongodb_url: str, fake_url: str, api_key: str) -> dict[str, str]:
    providers = [
        {
            "name": name,
            "kind": kind,
            "base_url": f"{fake_url}/v1" if kind == "openai" else fake_url,
            "api_key": "sk-chaos-0123456789",
            "models": [model_of(name)],
            "timeouts": TIMEOUTS,
        }
        for name, kind in PROVIDERS
    ]
    return {
        "ECHOTUNE_REDIS_URL": redis_url,
        "ECHOTUNE_MONGODB_URL": mongodb_url,
        "ECHOTUNE_NAMESPACE": NAMESPACE,
        "ECHOTUNE_PROVIDERS": json.dumps(providers),
        "ECHOTUNE_DEFAULT_PROVIDER": PROVIDERS[0][0],
        "ECHOTUNE_FALLBACKS": json.dumps([name for name, _ in PROVIDERS]),
        "ECHOTUNE_LOG_LEVEL": "INFO",
        "ECHOTUNE_DEV_API_KEY": api_key,
        "ECHOTUNE_GATEWAY_SESSION_SECRET": secrets.token_urlsafe(16),
        "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_USER": UNLIMITED,
        "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_IP": UNLIMITED,
        "ECHOTUNE_GATEWAY_MAX_OPEN_STREAMS_PER_USER": UNLIMITED,
        **tuning(is_cluster(redis_url)),
    }


class ChaosStack:
    """2 gateways, 3 workers, telemetry, Redis, SecantusDB and the fake upstream by default."""

    def __init__(
        self, workdir: Path, *, gateways: int = 2, workers: int = 3, cluster: bool = False
    ) -> None:
        self.workdir = workdir
        self.api_key = f"et_chaos{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"
        self.redis: RedisServer | RedisClusterServers
        if cluster:
            self.redis = RedisClusterServers(str(workdir / "redis"))
        else:
            self.redis = RedisServer(
                str(workdir / "redis"), appendonly=True, extra_args=_LATENCY_MONITOR
            )
        self.mongo = SecantusServer(str(workdir / "mongo"))
        self.lives: list[ProcessLife] = []
        self.env: dict[str, str] = {}
        self.fake_url = ""
        self.redis_client: Redis | None = None
        # (Unix time, ms) from Redis' latency monitor; None: not monitored (a cluster)
        self.redis_stalls: list[tuple[float, int]] | None = None if cluster else []
        self.mongodb_url = ""
        self.gateway_ports = [free_port() for _ in range(gateways)]
        self.gateways: list[ServiceProcess | None] = [None] * gateways
        self.workers: list[ServiceProcess | None] = [None] * workers
        self._others: list[ServiceProcess] = []
        self._incarnations: dict[str, int] = {}
        self._life_of: dict[int, ProcessLife] = {}

    # --- start and stop ---------------------------------------------------------------------

    async def start(self) -> None:
        (self.workdir / "redis").mkdir(parents=True, exist_ok=True)
        (self.workdir / "mongo").mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.redis.start)
        self.redis_client = create_redis(self.redis.url, max_connections=2)
        self.mongodb_url = await asyncio.to_thread(self.mongo.start) + "/echotune"
        fake, self.fake_url = await start_fake_llm("--log-level", "warning")
        self._track(fake, "fake-llm", "fake-llm")
        self.env = stack_env(self.redis.url, self.mongodb_url, self.fake_url, self.api_key)
        telemetry, _ = await start_telemetry(self.env, name="telemetry")
        self._track(telemetry, "telemetry", "telemetry")
        for index in range(len(self.gateways)):
            await self.start_gateway(index)
        await asyncio.gather(*(self.start_worker(slot) for slot in range(len(self.workers))))

    async def stop(self) -> None:
        """Stop everything this stack started (services first, then the servers)."""
        procs = [*self.workers, *self.gateways, *reversed(self._others)]
        for proc in procs:
            if proc is not None:
                await proc.stop()
                self._ended(proc, "stop")
        await asyncio.to_thread(self.mongo.stop)
        if self.redis_client is not None:
            await self.redis_client.aclose()
        await asyncio.to_thread(self.redis.stop)

    def _track(self, proc: ServiceProcess, name: str, role: str) -> None:
        life = ProcessLife(name, role, now_ns(), lines=proc.lines)
        self.lives.append(life)
        self._life_of[id(proc)] = life
        if role in ("fake-llm", "telemetry"):
            self._others.append(proc)

    def _ended(self, proc: ServiceProcess, how: str) -> None:
        life = self._life_of.get(id(proc))
        if life is not None and not life.t_end_ns:
            life.t_end_ns, life.ended_by = now_ns(), how

    def _next_name(self, slot: str) -> str:
        self._incarnations[slot] = self._incarnations.get(slot, 0) + 1
        return f"{slot}#{self._incarnations[slot]}"

    def name_of(self, proc: ServiceProcess | None) -> str:
        life = self._life_of.get(id(proc)) if proc is not None else None
        return life.name if life else "-"

    # --- gateways ---------------------------------------------------------------------------

    def gateway_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[index]}"

    def gateway_up(self, index: int) -> bool:
        return self.gateways[index] is not None

    async def start_gateway(self, index: int) -> None:
        name = self._next_name(f"gateway{index + 1}")
        proc, _ = await start_gateway(self.env, name=name, port=self.gateway_ports[index])
        self._track(proc, name, "gateway")
        self.gateways[index] = proc

    async def kill_gateway(self, index: int) -> str:
        proc = self.gateways[index]
        assert proc is not None
        self.gateways[index] = None
        proc.kill()
        self._ended(proc, "SIGKILL")
        await proc.stop()  # reaps it
        return self.name_of(proc)

    # --- workers ----------------------------------------------------------------------------

    def workers_up(self) -> list[int]:
        return [slot for slot, proc in enumerate(self.workers) if proc is not None]

    async def busiest_worker(self, preferred: int) -> int:
        """The worker holding the most jobs in the consumer group (``preferred`` among equals)."""
        held = await self._held_jobs()

        def holding(slot: int) -> int:
            proc = self.workers[slot]
            return held.get(proc.pid, 0) if proc is not None else 0

        up = self.workers_up()
        return max(up, key=lambda slot: (holding(slot), slot == preferred)) if up else preferred

    async def _held_jobs(self) -> dict[int, int]:
        """Jobs pending per worker process id (a consumer's name carries its process id)."""
        if self.redis_client is None:
            return {}
        try:
            summary = await self.redis_client.xpending(Keys(NAMESPACE).jobs, JOBS_GROUP)
        except RedisError:
            return {}
        held: dict[int, int] = {}
        for consumer in summary.get("consumers") or ():
            pid = str(consumer["name"]).rsplit("-", 2)[-2]
            if pid.isdigit():
                held[int(pid)] = int(consumer["pending"])
        return held

    async def start_worker(self, slot: int) -> None:
        name = self._next_name(f"worker{slot + 1}")
        proc = await start_worker(self.env, name=name)
        self._track(proc, name, "worker")
        self.workers[slot] = proc

    async def kill_worker(self, slot: int) -> str:
        proc = self.workers[slot]
        assert proc is not None
        self.workers[slot] = None
        proc.kill()
        self._ended(proc, "SIGKILL")
        await proc.stop()
        return self.name_of(proc)

    async def term_worker(self, slot: int) -> str:
        """SIGTERM: the worker drains (``DRAIN_S``) and exits; waits for the exit."""
        proc = self.workers[slot]
        assert proc is not None
        self.workers[slot] = None
        await proc.stop(signal.SIGTERM, timeout=30.0)
        self._ended(proc, "SIGTERM")
        return self.name_of(proc)

    # --- Redis and MongoDB ------------------------------------------------------------------

    async def restart_redis(self, *, graceful: bool) -> None:
        """SIGTERM (AOF flushed) or SIGKILL (appendfsync always), then start at once."""
        assert isinstance(self.redis, RedisServer)
        await self.keep_redis_stalls()  # a restart forgets them
        await asyncio.to_thread(self.redis.stop if graceful else self.redis.kill)
        await asyncio.to_thread(self.redis.start)

    async def keep_redis_stalls(self) -> None:
        """Move what Redis' latency monitor saw (its main thread blocked, e.g. on an fsync)
        into :attr:`redis_stalls`. Lossy, never inflating: Redis keeps 160 samples per event,
        and one taken between HISTORY and RESET is dropped."""
        stalls, client = self.redis_stalls, self.redis_client
        if stalls is None or client is None:
            return
        try:
            latest = await client.execute_command("LATENCY", "LATEST")
            for event in latest:
                history = await client.execute_command("LATENCY", "HISTORY", event[0])
                stalls += [(float(at), int(ms)) for at, ms in history]
            await client.execute_command("LATENCY", "RESET")
        except RedisError:
            pass  # Redis is down: nothing to read

    async def fail_over_redis(self, target: int) -> tuple[str, float]:
        """SIGKILL primary number ``target`` (by port), wait until its replica took over, start
        it again (it rejoins as a replica); (what happened, seconds until the takeover)."""
        cluster = self.redis
        assert isinstance(cluster, RedisClusterServers)
        primaries = [n for n in cluster.nodes if n.proc is not None and cluster.role(n) == "master"]
        node = sorted(primaries, key=lambda n: n.port)[target % len(primaries)]
        began = now_ns()
        await asyncio.to_thread(node.kill)
        await asyncio.to_thread(cluster.wait_until_healthy)
        took_over_s = (now_ns() - began) / 1e9
        await asyncio.to_thread(cluster.restore)
        return f"primary :{node.port} SIGKILLed; its replica served after", took_over_s

    async def stop_mongo(self) -> None:
        await asyncio.to_thread(self.mongo.stop)

    async def start_mongo(self) -> None:
        await asyncio.to_thread(self.mongo.start)

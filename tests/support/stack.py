"""A stack of real echotune processes for the end-to-end tests, and how they are set up."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field

from tests.support.processes import ServiceProcess, start_gateway, start_worker

PROVIDER_SECRET = "sk-test-NEVER-LOG-THIS-0123456789"
API_KEY = "et_testkey0001_S3cretNeverLoggedAnywhere0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


TIMEOUTS = {"connect": 2, "first_token": 5, "idle": 5, "total": 60}


def openai_provider(fake_url: str, name: str, **extra: object) -> dict[str, object]:
    """An OpenAI-kind provider served by the fake upstream, whose model is ``<name>-model``."""
    return {
        "name": name,
        "kind": "openai",
        "base_url": f"{fake_url}/v1",
        "api_key": PROVIDER_SECRET,
        "models": [f"{name}-model"],
        "timeouts": TIMEOUTS,
        **extra,
    }


def providers_config(fake_url: str) -> list[dict[str, object]]:
    timeouts = TIMEOUTS
    return [
        {
            "name": "fake-openai",
            "kind": "openai",
            "base_url": f"{fake_url}/v1",
            "api_key": PROVIDER_SECRET,
            "models": ["gpt-fake", "gpt-fake-mini"],
            "timeouts": timeouts,
        },
        {
            "name": "fake-anthropic",
            "kind": "anthropic",
            "base_url": fake_url,
            "api_key": PROVIDER_SECRET,
            "models": ["claude-fake"],
            "timeouts": timeouts,
        },
        {
            "name": "fake-gemini",
            "kind": "gemini",
            "base_url": fake_url,
            "api_key": PROVIDER_SECRET,
            "models": ["gemini-fake"],
            "timeouts": timeouts,
        },
        {"name": "demo", "kind": "demo", "models": ["echotune-demo-1"], "token_pace_ms": 2},
        openai_provider(fake_url, "flaky"),
    ]


@dataclass
class Stack:
    """Gateways and workers running as real processes against one Redis namespace."""

    env: dict[str, str]
    redis_url: str
    namespace: str
    gateways: list[tuple[ServiceProcess, str]] = field(default_factory=list)
    workers: list[ServiceProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateways[0][1]

    async def add_gateway(self) -> str:
        proc, url = await start_gateway(self.env, name=f"gateway{len(self.gateways) + 1}")
        self.gateways.append((proc, url))
        return url

    async def add_worker(self, **env: str) -> ServiceProcess:
        proc = await start_worker({**self.env, **env}, name=f"worker{len(self.workers) + 1}")
        self.workers.append(proc)
        return proc

    async def stop(self) -> None:
        for proc in self.processes():
            await proc.stop()

    def processes(self) -> list[ServiceProcess]:
        return [*self.workers, *(p for p, _ in self.gateways)]

    def logs(self) -> str:
        return "\n".join(p.output() for p in self.processes())

    async def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line matching ``pattern`` that any process logs (kept or awaited)."""
        waits = [asyncio.ensure_future(p.wait_for_line(pattern, timeout)) for p in self.processes()]
        exited = 0
        try:
            for first in asyncio.as_completed(waits):
                try:
                    return (await first).group(0)
                except RuntimeError:  # that process exited; another may still log it
                    exited += 1
                except TimeoutError:
                    break
            raise AssertionError(
                f"no process logged {pattern!r} within {timeout} s ({exited} exited)"
            )
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def stack_env(redis_url: str, fake_url: str, **overrides: str) -> dict[str, str]:
    return {
        "ECHOTUNE_REDIS_URL": redis_url,
        "ECHOTUNE_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "ECHOTUNE_PROVIDERS": json.dumps(providers_config(fake_url)),
        "ECHOTUNE_DEFAULT_PROVIDER": "fake-openai",
        "ECHOTUNE_FALLBACKS": json.dumps(["fake-anthropic"]),
        "ECHOTUNE_RESUME_WINDOW_S": "3",
        "ECHOTUNE_GATEWAY_HEARTBEAT_S": "0.3",
        "ECHOTUNE_LOG_LEVEL": "INFO",
        "ECHOTUNE_DEV_API_KEY": API_KEY,
        "ECHOTUNE_GATEWAY_SESSION_SECRET": "test-session-secret",
        "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_USER": "100000",
        "ECHOTUNE_GATEWAY_CHAT_STARTS_PER_MINUTE_IP": "100000",
        "ECHOTUNE_GATEWAY_MAX_OPEN_STREAMS_PER_USER": "100000",
        **overrides,
    }


async def start_stack(
    redis_url: str,
    fake_url: str,
    *,
    gateways: int = 1,
    workers: int = 1,
    providers: list[dict[str, object]] | None = None,
    **overrides: str,
) -> Stack:
    env = stack_env(redis_url, fake_url, **overrides)
    if providers is not None:
        env["ECHOTUNE_PROVIDERS"] = json.dumps(providers)
    stack = Stack(env, redis_url, env["ECHOTUNE_NAMESPACE"])
    for _ in range(gateways):
        await stack.add_gateway()
    for _ in range(workers):
        await stack.add_worker()
    return stack

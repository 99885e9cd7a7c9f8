"""Service processes used by the end-to-end tests."""

from __future__ import annotations

from deploy.local.processes import PYTHON, ServiceProcess, start_gateway, start_worker

__all__ = ["ServiceProcess", "start_fake_llm", "start_gateway", "start_worker"]


async def start_fake_llm(*args: str) -> tuple[ServiceProcess, str]:
    proc = ServiceProcess("fake-llm", [PYTHON, "-m", "echotune.fake_llm", "--port", "0", *args], {})
    match = await proc.start(r"FAKE_LLM_READY port=(\d+)")
    return proc, f"http://127.0.0.1:{match.group(1)}"

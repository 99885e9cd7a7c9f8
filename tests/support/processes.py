"""Service processes used by the end-to-end tests."""

from __future__ import annotations

from deploy.local.processes import ServiceProcess, start_fake_llm, start_gateway, start_worker

__all__ = ["ServiceProcess", "start_fake_llm", "start_gateway", "start_worker"]

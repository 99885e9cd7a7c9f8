"""A service imports only the kit it uses."""

from __future__ import annotations

import subprocess
import sys


def loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_analytics_loads_no_redis_and_no_streaming_code() -> None:
    """Its settings imported the breaker, and with it redis."""
    modules = loaded_by("echotune.analytics.app")
    assert not {m for m in modules if m == "redis" or m.startswith("redis.")}
    assert not {"echotune.common.breaker", "echotune.common.request_stream"} & modules

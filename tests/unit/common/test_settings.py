"""Settings refuse what would break a service later."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from echotune.analytics.settings import AnalyticsSettings
from echotune.common.provider_settings import BreakerSettings
from echotune.gateway.settings import GatewaySettings
from echotune.telemetry.settings import TelemetrySettings
from echotune.worker.settings import WorkerSettings

KINDS: list[type[BaseSettings]] = [
    GatewaySettings, WorkerSettings, TelemetrySettings, AnalyticsSettings, BreakerSettings,
]  # fmt: skip
FLOATS = [
    (kind, name)
    for kind in KINDS
    for name, field in kind.model_fields.items()
    if field.annotation in (float, float | None)
]


def test_there_are_float_settings_to_check() -> None:
    assert len(FLOATS) > 20


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize(("kind", "name"), FLOATS, ids=[f"{k.__name__}.{n}" for k, n in FLOATS])
def test_a_float_setting_refuses_infinity_and_nan(
    kind: type[BaseSettings], name: str, value: str
) -> None:
    """``RESUME_WINDOW_S=inf`` passed ``gt=0``, then the gateway's start failed on int(inf)."""
    with pytest.raises(ValidationError):
        kind(**{name: value})


@pytest.mark.parametrize(
    "provider",
    [
        '{"name": "demo", "kind": "demo", "models": ["m"], "token_pace_ms": Infinity}',
        '{"name": "demo", "kind": "demo", "models": ["m"], "timeouts": {"total": Infinity}}',
    ],
)
def test_a_provider_refuses_infinity(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON as Python reads it has ``Infinity``: a demo paced by it never answered."""
    monkeypatch.setenv("ECHOTUNE_PROVIDERS", f"[{provider}]")
    with pytest.raises(ValidationError):
        WorkerSettings()


@pytest.mark.parametrize("wait", ["context_timeout_s", "profile_timeout_s"])
def test_a_probe_lease_shorter_than_twice_the_prompts_build_is_refused(
    wait: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe asked with the take would lapse while the prompt is built: two probes at once."""
    monkeypatch.setenv("ECHOTUNE_BREAKER_PROBE_TIMEOUT_S", "3")
    assert WorkerSettings(**{wait: 1.5}).breaker.probe_timeout_s == 3
    with pytest.raises(ValidationError, match="PROBE_TIMEOUT_S"):
        WorkerSettings(**{wait: 1.6})


@pytest.mark.parametrize("kind", [GatewaySettings, WorkerSettings])
def test_a_refused_provider_does_not_print_its_api_key(
    kind: type[BaseSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider refused as a whole had its raw entry, key included, printed with the error."""
    key = "sk-live-0123456789abcdefSECRET"
    provider = (
        '{"name": "g", "kind": "gemini", "models": ["m"], "base_url": "http://u.test/?x=1", '
        f'"api_key": "{key}"}}'
    )
    monkeypatch.setenv("ECHOTUNE_PROVIDERS", f"[{provider}]")
    with pytest.raises(ValidationError) as refused:
        kind()
    assert "query or fragment" in str(refused.value)
    assert "SECRET" not in str(refused.value)

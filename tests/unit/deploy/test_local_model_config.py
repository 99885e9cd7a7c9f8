"""The local model's configuration: which GGUF file, which name, the provider it becomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local import local_model
from echotune.common.providers import ProviderConfig, ProviderKind


def test_a_configured_gguf_path_is_used_and_names_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "Qwen2.5-0.5B-Instruct.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("ECHOTUNE_LOCAL_MODEL_PATH", str(gguf))
    assert local_model.model_path() == gguf
    assert local_model.model_name() == "qwen2.5-0.5b-instruct.q4_k_m"
    command = local_model.server_command("127.0.0.1", 0)
    assert command[command.index("--model") + 1] == str(gguf)
    assert command[command.index("--interrupt_requests") + 1] == "False"


def test_a_missing_gguf_path_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOTUNE_LOCAL_MODEL_PATH", str(tmp_path / "nope.gguf"))
    with pytest.raises(local_model.LocalModelUnavailable, match=r"nope\.gguf: no such file"):
        local_model.model_path()
    why = local_model.unavailable()
    assert why is not None
    assert why == local_model.INSTALL_HINT or "nope.gguf: no such file" in why


def test_the_provider_is_a_valid_openai_provider_that_waits_for_the_queue() -> None:
    config = ProviderConfig.model_validate(local_model.provider("http://127.0.0.1:8000/v1"))
    assert config.kind is ProviderKind.OPENAI
    assert config.name == local_model.PROVIDER
    assert config.models == [local_model.model_name()]
    assert config.api_key is None
    assert config.timeouts.first_token >= 60  # answers queued ahead of it


@pytest.mark.parametrize(
    ("value", "wanted"), [("1", True), ("true", True), ("0", False), ("", False)]
)
def test_the_echotune_local_model_switch(
    value: str, wanted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHOTUNE_LOCAL_MODEL", value)
    assert local_model.wanted() is wanted

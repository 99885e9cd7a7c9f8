"""``python -m deploy.local.llama_server [options of llama_cpp.server]``: llama-cpp-python's
OpenAI-compatible server as echotune runs it (needs the ``local-model`` dependency group).

The same app, options and defaults as ``python -m llama_cpp.server``, with two differences:

* ``X-Request-Id`` is dropped before the app sees it: llama_cpp.server answers 400 ("Wrong uuid",
  starlette-context's RequestIdPlugin) to a request id that is not a UUID, and the worker sends
  echotune's request id there, which is whatever string the client chose. The server does
  nothing else with the header.
* ``--host``/``--port`` are used as given: llama_cpp.server lets ``HOST``/``PORT`` in the
  environment override them.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import uvicorn
from llama_cpp.server.app import create_app
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

Scope = dict[str, Any]
DROPPED = b"x-request-id"


def without_request_id(app: Any) -> Any:
    """``app`` (ASGI) receiving HTTP requests without their ``X-Request-Id`` header."""

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(name, value) for name, value in scope["headers"] if name != DROPPED]
            scope = {**scope, "headers": headers}
        await app(scope, receive, send)

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.llama_server")
    add_args_from_model(parser, Settings)
    args = parser.parse_args()
    # parse_model_from_args is annotated as returning the class: it returns an instance
    server = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    model = cast(ModelSettings, parse_model_from_args(ModelSettings, args))
    app = create_app(server_settings=server, model_settings=[model])
    uvicorn.run(without_request_id(app), host=server.host, port=server.port)


if __name__ == "__main__":
    main()

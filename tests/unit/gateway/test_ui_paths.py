"""The web UI's files: a path that names no file is the route's JSON 404, whatever it holds."""

from __future__ import annotations

import httpx
import pytest

from echotune.gateway.app import create_app
from echotune.gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    "path", ["/ui/js/app%00.js", "/ui/js/../app.py", "/ui/.hidden.js", "/ui/js/nothing.js"]
)
async def test_a_path_naming_no_file_is_a_404(path: str) -> None:
    """A NUL byte made resolving the path raise: a plain-text 500, without logging in."""
    app = create_app(GatewaySettings(auth_enabled=False))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/ui/js/app.js")).status_code == 200
        response = await http.get(path)
    assert response.status_code == 404, (response.status_code, response.text)
    assert response.json()["error"]["code"] == "not_found"

"""How the gateway serves the UI: no authentication, strict headers, small gzipped scripts."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import pytest
from playwright.async_api import Response

from tests.browser.ui import UI
from tests.support.stack import Stack

JS_BUDGET_BYTES = 60_000  # all JavaScript the UI loads, gzipped


@pytest.fixture
async def anonymous() -> Any:
    async with httpx.AsyncClient(timeout=10.0) as http:
        yield http


@pytest.mark.parametrize("path", ["/", "/dashboard", "/ui/js/app.js", "/ui/app.css"])
async def test_ui_is_public_and_carries_the_security_headers(
    ui_stack: Stack, anonymous: httpx.AsyncClient, path: str
) -> None:
    response = await anonymous.get(f"{ui_stack.url}{path}")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert "etag" in response.headers


async def test_the_page_has_no_inline_script_or_style(
    ui_stack: Stack, anonymous: httpx.AsyncClient
) -> None:
    html = (await anonymous.get(f"{ui_stack.url}/")).text
    assert "<script>" not in html
    assert "style=" not in html
    assert "onclick=" not in html
    assert '<script type="module" src="/ui/js/app.js"></script>' in html


async def test_assets_are_revalidated_and_gzipped(
    ui_stack: Stack, anonymous: httpx.AsyncClient
) -> None:
    url = f"{ui_stack.url}/ui/js/chat.js"
    first = await anonymous.get(url, headers={"Accept-Encoding": "gzip"})
    assert first.headers["content-encoding"] == "gzip"
    assert first.headers["content-type"].startswith("text/javascript")
    again = await anonymous.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    plain = await anonymous.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.text == first.text


@pytest.mark.parametrize(
    "path", ["/ui/../routes.py", "/ui/%2e%2e/routes.py", "/ui/.hidden", "/ui/nope.js", "/ui/"]
)
async def test_only_static_files_are_served(
    ui_stack: Stack, anonymous: httpx.AsyncClient, path: str
) -> None:
    response = await anonymous.get(f"{ui_stack.url}{path}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")


async def test_api_stays_authenticated(ui_stack: Stack, anonymous: httpx.AsyncClient) -> None:
    assert (await anonymous.get(f"{ui_stack.url}/api/providers")).status_code == 401


async def test_javascript_weight_within_budget_and_csp_holds(ui: UI) -> None:
    """Every script the browser loads for the chat and the dashboard, gzipped, ≤ 60 kB."""
    scripts: dict[str, Response] = {}
    ui.page.on(
        "response",
        lambda r: scripts.setdefault(r.url, r) if r.request.resource_type == "script" else None,
    )
    await ui.login()
    await ui.page.get_by_role("link", name="Dashboard").click()
    ui.expect_failures("/api/analytics", "/api/insights")
    await ui.page.wait_for_load_state("networkidle")

    sizes = {}
    for url, response in scripts.items():
        body = await response.body()
        assert (await response.all_headers()).get("content-encoding") == "gzip", url
        sizes[url.rsplit("/ui/", 1)[-1]] = len(gzip.compress(body, compresslevel=9))
    total = sum(sizes.values())
    print(f"JavaScript, gzipped: {total} bytes in {len(sizes)} files: {sizes}")
    assert "js/app.js" in sizes
    assert "js/dashboard.js" in sizes
    assert total <= JS_BUDGET_BYTES, sizes
    assert await ui.csp_violations() == []

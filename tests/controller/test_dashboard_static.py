"""The dashboard's static routes (controller/web): served without a token, each with a strict
Content-Security-Policy and nosniff; nothing outside ``static/`` is reachable; hostile Host
headers add nothing to the policy. The pages' behaviour is tested in a real browser
(tests/e2e/test_dashboard.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from tether.controller.web import STATIC_DIR, routes, security_headers


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=Starlette(routes=routes()))
    async with httpx.AsyncClient(transport=transport, base_url="http://ctl.example:8080") as c:
        yield c


def assert_secured(headers: dict[str, str] | object) -> str:
    csp = headers["content-security-policy"]  # type: ignore[index]
    assert headers["x-content-type-options"] == "nosniff"  # type: ignore[index]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    return str(csp)


async def test_the_page_is_served_at_the_root_without_a_token_and_with_a_strict_policy(
        client: httpx.AsyncClient) -> None:
    resp = await client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    csp = assert_secured(resp.headers)
    assert "connect-src 'self' ws://ctl.example:8080 wss://ctl.example:8080;" in csp
    assert '<script type="module" src="/static/js/app.js"></script>' in resp.text
    assert "<script>" not in resp.text  # no inline script: the CSP would refuse it


async def test_every_static_file_is_served_with_its_type_and_the_policy(
        client: httpx.AsyncClient) -> None:
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".html", ".js", ".css"}
    for path in files:
        resp = await client.get(f"/static/{path.relative_to(STATIC_DIR).as_posix()}")
        assert resp.status_code == 200, path
        assert_secured(resp.headers)
        if path.suffix in (".js", ".mjs"):  # .mjs: vendored xterm.js, loaded as modules
            assert "javascript" in resp.headers["content-type"], path


def test_no_script_builds_html_from_text() -> None:
    """Nothing a node sends may be parsed as markup: the scripts never use innerHTML,
    outerHTML, insertAdjacentHTML, document.write or eval."""
    for path in [*STATIC_DIR.rglob("*.js"), *STATIC_DIR.rglob("*.mjs")]:  # vendored too
        source = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function"):
            assert sink not in source, f"{path.name} uses {sink}"


@pytest.mark.parametrize("path", ["/static/../__init__.py", "/static/%2e%2e/__init__.py",
                                  "/static/js/../../__init__.py", "/static/nope.js"])
async def test_nothing_outside_the_static_directory_is_served(
        client: httpx.AsyncClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status_code == 404
    assert "STATIC_DIR" not in resp.text


@pytest.mark.parametrize("host", ["evil.example; script-src *", "a b", "x\r\nSet-Cookie: y",
                                  "'unsafe-inline'", "h" * 300])
def test_a_hostile_host_header_adds_nothing_to_the_policy(host: str) -> None:
    csp = security_headers(host)["Content-Security-Policy"]
    assert re.search(r"connect-src 'self'; ", csp), csp
    assert security_headers(None)["Content-Security-Policy"] == csp

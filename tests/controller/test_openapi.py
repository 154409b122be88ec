"""Issue 13 (CLI polish): the REST API publishes an OpenAPI document at
``/api/v1/openapi.json`` (controller/api/openapi.py), and every REST route the app serves
appears in it with its methods. A route added without its line in ``OPERATIONS`` fails
here, by name."""

from __future__ import annotations

from pathlib import Path

import httpx

from tether.controller.api.openapi import OPERATIONS, rest_operations
from tether.controller.app import create_app
from tether.controller.config import ControllerConfig


def served_operations(tmp_path: Path) -> list[tuple[str, str]]:
    """Every (method, path) of the app's HTTP routes, WebSocket routes and mounts aside."""
    app = create_app(ControllerConfig(data_dir=tmp_path / "ctl"))  # built, never started
    return rest_operations(app.routes)


def test_every_rest_route_of_the_app_is_documented_with_its_methods(tmp_path: Path) -> None:
    served = served_operations(tmp_path)
    assert ("GET", "/api/v1/nodes") in served and ("POST", "/api/v1/jobs") in served
    undocumented = [f"{method} {path}" for method, path in served
                    if (method, path) not in OPERATIONS]
    assert not undocumented, ("add a line to OPERATIONS in controller/api/openapi.py for: "
                              + ", ".join(undocumented))


def test_the_dashboard_page_websockets_and_static_files_are_not_rest_operations(
        tmp_path: Path) -> None:
    paths = {path for _, path in served_operations(tmp_path)}
    assert "/ws" not in paths and "/v1/edge/connect" not in paths and "/" not in paths
    assert not [p for p in paths if p.startswith("/static")]


async def test_the_document_is_served_without_a_token_and_lists_each_route(
        anon: httpx.AsyncClient, tmp_path: Path) -> None:
    resp = await anon.get("/api/v1/openapi.json")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"]
    for method, path in served_operations(tmp_path):
        operation = doc["paths"][path][method.lower()]
        assert operation["summary"] and operation["responses"], (method, path)
        names = [p["name"] for p in operation.get("parameters", [])]
        assert all(f"{{{name}}}" in path for name in names), (path, names)
    nodes = doc["paths"]["/api/v1/nodes/{node_id}"]["get"]
    assert nodes["security"] == [{"bearer": []}] and nodes["x-tether-role"] == "viewer"
    submit = doc["paths"]["/api/v1/nodes/{node_id}/commands"]["post"]
    assert submit["x-tether-role"] == "operator" and "202" in submit["responses"]
    assert nodes["parameters"][0]["name"] == "node_id"
    assert "security" not in doc["paths"]["/api/v1/health"]["get"]
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))

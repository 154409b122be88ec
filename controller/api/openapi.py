"""``GET /api/v1/openapi.json``: an OpenAPI 3.1 document of the controller's REST API.

Built from the routes the app actually serves (WebSocket routes and mounted static files
aside) and :data:`OPERATIONS`, one line per (method, path): its summary, what a success
answers, and who may call it. A route without its line is left out of the document, and
``tests/controller/test_openapi.py`` fails naming it: adding a route means adding its line.
Lines for routes this build does not serve are never published (the table may run ahead).
Bodies and errors are described in docs/protocol.md §8; every error body has the one shape
of :data:`ERROR_SCHEMA`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tether.common import __version__


class Op(NamedTuple):
    """One operation: ``summary``; the ``status`` a success answers; ``auth``: the least
    role of the Bearer operator token it takes (``viewer``, ``operator``, ``admin``;
    docs/security.md), ``node`` (a join token in the body) or ``none``."""

    summary: str
    status: int = 200
    auth: str = "viewer"


VIEW, OPER, ADMIN = "viewer", "operator", "admin"

OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/api/v1/health"): Op("Liveness of the controller, its id and version", auth="none"),
    ("GET", "/api/v1/openapi.json"): Op("This document", auth="none"),
    ("GET", "/metrics"): Op("Prometheus metrics (a token only with --metrics-require-token)",
                            auth="none"),
    ("POST", "/v1/edge/enroll"): Op("Enroll a node with a join token and its public key",
                                    201, auth="node"),
    ("POST", "/api/v1/join-tokens"): Op("Create a join token", 201, ADMIN),
    ("GET", "/api/v1/join-tokens"): Op("Join tokens that can still enroll", auth=ADMIN),
    ("DELETE", "/api/v1/join-tokens/{token_id}"): Op("Revoke a join token", auth=ADMIN),
    ("POST", "/api/v1/tokens"): Op("Create an operator token (role, name, ttl_s)", 201, ADMIN),
    ("GET", "/api/v1/tokens"): Op("Every operator token (no secrets)", auth=ADMIN),
    ("DELETE", "/api/v1/tokens/{token_id}"): Op("Revoke an operator token", auth=ADMIN),
    ("GET", "/api/v1/whoami"): Op("The caller's token id, name and role"),
    ("GET", "/api/v1/audit"): Op("Audit records, newest first", auth=ADMIN),
    ("GET", "/api/v1/nodes"): Op("Every node, filtered by ?label=K=V and ?liveness="),
    ("GET", "/api/v1/nodes/{node_id}"): Op("One node: liveness, session, runtime, resources"),
    ("DELETE", "/api/v1/nodes/{node_id}"): Op("Remove the node, its key and its data", auth=ADMIN),
    ("GET", "/api/v1/nodes/{node_id}/sessions"): Op("The node's session history"),
    ("POST", "/api/v1/nodes/{node_id}/disable"): Op("Disable the node (closes it with 4403)",
                                                    auth=ADMIN),
    ("POST", "/api/v1/nodes/{node_id}/enable"): Op("Enable the node again", auth=ADMIN),
    ("GET", "/api/v1/nodes/{node_id}/events"): Op("The node's events, newest first"),
    ("GET", "/api/v1/nodes/{node_id}/monitor"): Op("The node's last monitor packets per topic"),
    ("GET", "/api/v1/nodes/{node_id}/logs"): Op("A page of the node's app and runtime logs"),
    ("GET", "/api/v1/nodes/{node_id}/dead-letters"): Op("The node's poison frames"),
    ("POST", "/api/v1/nodes/{node_id}/commands"): Op("Submit a command to the node", 202, OPER),
    ("GET", "/api/v1/commands"): Op("Commands, newest first, with counts by state"),
    ("GET", "/api/v1/commands/{command_id}"): Op("One command: state, timeline, result"),
    ("POST", "/api/v1/commands/{command_id}/cancel"): Op("Cancel the command", 202, OPER),
    ("POST", "/api/v1/commands/{command_id}/pause"): Op("Pause the command", 202, OPER),
    ("POST", "/api/v1/commands/{command_id}/resume"): Op("Resume the command", 202, OPER),
    ("GET", "/api/v1/commands/{command_id}/logs"): Op("A page of the command's output"),
    ("GET", "/api/v1/diag"): Op("What 'tether diag controller' shows"),
    ("POST", "/api/v1/jobs"): Op("Run one command over many nodes", 202, OPER),
    ("GET", "/api/v1/jobs"): Op("Jobs, newest first, with summaries"),
    ("GET", "/api/v1/jobs/{job_id}"): Op("One job: each node's command and state, a summary"),
    ("POST", "/api/v1/jobs/{job_id}/cancel"): Op("Cancel the job's remaining parts", 202, OPER),
    ("POST", "/api/v1/rollouts"): Op("Start a rollout of a published bundle version, ring "
                                     "by ring", 202, OPER),
    ("GET", "/api/v1/rollouts"): Op("Rollouts, newest first, with counts"),
    ("GET", "/api/v1/rollouts/{rollout_id}"): Op("One rollout: its state, why, rings, nodes"),
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): Op("Pause: no new offers", 202, OPER),
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): Op("Resume, accepting the failures so "
                                                         "far", 202, OPER),
    ("POST", "/api/v1/rollouts/{rollout_id}/abort"): Op("Stop for good", 202, OPER),
    ("POST", "/api/v1/rtc/links"): Op("Grant two nodes a peer (tether cp), for 10 min", 201,
                                      OPER),
    ("GET", "/api/v1/rtc/config"): Op("The dashboard's ICE servers (--rtc-ice-server)", 200,
                                      OPER),
    ("POST", "/api/v1/bundles"): Op("Publish a bundle file (the body, octet-stream)", 201,
                                    OPER),
    ("GET", "/api/v1/bundles"): Op("Published bundles, newest first, paged by ?before="),
    ("GET", "/api/v1/bundles/{name}/{version}"): Op("One bundle: metadata and manifest"),
    ("GET", "/api/v1/bundles/{name}/{version}/file"): Op(
        "The bundle file, with Range (also for a node: Authorization: Tether-Node)",
        auth=OPER),
}

# HTTP routes that are pages, not the REST API: the dashboard (controller/web)
PAGES = frozenset({"/"})

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}}}},
}

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")


def rest_operations(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """(method, path) of every REST route in ``routes``: HTTP routes but :data:`PAGES`
    (HEAD, which Starlette adds to each GET, aside; WebSocket routes and mounted static
    files are not :class:`Route`)."""
    return sorted((method, route.path) for route in routes
                  if isinstance(route, Route) and route.path not in PAGES
                  for method in route.methods or () if method != "HEAD")


def _operation(method: str, path: str, op: Op) -> dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in _PARAM.findall(path)]
    bare = _PARAM.sub(lambda m: m.group(1), path).strip("/")
    body: dict[str, Any] = {
        "summary": op.summary,
        "operationId": re.sub(r"[^a-z0-9]+", "_", f"{method.lower()}_{bare}"),
        "responses": {str(op.status): {"description": op.summary},
                      "default": {"description": "an error (docs/protocol.md §8)",
                                  "content": {"application/json": {
                                      "schema": {"$ref": "#/components/schemas/Error"}}}}},
    }
    if params:
        body["parameters"] = params
    if op.auth in (VIEW, OPER, ADMIN):
        body["security"] = [{"bearer": []}]
        body["x-tether-role"] = op.auth  # the least role that may call it
    if method in ("POST", "PUT", "PATCH"):
        body["requestBody"] = {"required": False, "content": {"application/json": {
            "schema": {"type": "object"}}}}
    return body


def openapi_document(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The document for the documented operations among ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path in rest_operations(routes):
        op = OPERATIONS.get((method, path))
        if op is not None:
            paths.setdefault(path, {})[method.lower()] = _operation(method, path, op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tether controller", "version": __version__,
                 "description": "The REST API of a Tether controller (docs/protocol.md §8)."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an operator token"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
    }


async def openapi(request: Request) -> Response:
    """The document (public: it describes the API, it grants nothing)."""
    return JSONResponse(openapi_document(request.app.routes))


ROUTES = [Route("/api/v1/openapi.json", openapi, methods=["GET"])]

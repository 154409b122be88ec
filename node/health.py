"""The runtime's loopback status endpoints: ``/healthz`` (the process answers),
``/readyz`` (200 when ready, 503 with the reasons otherwise), ``/status`` (everything),
``/metrics`` (Prometheus text, node/metrics.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.common.bodies import read_json_object
from tether.protocol.errors import TetherError

from .metrics import node_registry

if TYPE_CHECKING:
    from .runtime import NodeRuntime

MAX_PUBLISH_BYTES = 64 * 1024
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def health_app(runtime: NodeRuntime) -> Starlette:
    registry = node_registry(runtime)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=METRICS_CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "node_id": runtime.identity.node_id})

    async def readyz(request: Request) -> Response:
        tree = runtime.readiness()
        return JSONResponse({"ready": tree["ready"], "reasons": tree["reasons"]},
                            status_code=200 if tree["ready"] else 503)

    async def status(request: Request) -> Response:
        return JSONResponse(runtime.status())

    async def publish(request: Request) -> Response:
        """POST {"topic": str, "data": {...}}: a monitor packet from a local app."""
        try:
            body = await read_json_object(request, max_bytes=MAX_PUBLISH_BYTES)
        except TetherError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        topic, data = body.get("topic"), body.get("data")
        if not isinstance(topic, str) or not 0 < len(topic) <= 128:
            return _error(400, "invalid_request", "'topic' must be a string of 1 to 128 chars")
        if not isinstance(data, dict):
            return _error(400, "invalid_request", "'data' must be a JSON object")
        seq = runtime.publish_monitor(topic, data)
        return JSONResponse({"seq": seq}, status_code=202)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/status", status), Route("/metrics", metrics),
                             Route("/publish", publish, methods=["POST"])])


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

"""The runtime's loopback status endpoints: ``/healthz`` (the process answers),
``/readyz`` (200 when ready, 503 with the reasons otherwise), ``/status`` (everything)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.common.bodies import read_json_object
from tether.protocol.errors import TetherError

if TYPE_CHECKING:
    from .runtime import NodeRuntime

MAX_PUBLISH_BYTES = 64 * 1024


def health_app(runtime: NodeRuntime) -> Starlette:
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
                             Route("/status", status),
                             Route("/publish", publish, methods=["POST"])])


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

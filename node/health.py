"""The runtime's loopback status endpoints: ``/healthz`` (the process answers),
``/readyz`` (200 when ready, 503 with the reasons otherwise), ``/status`` (everything)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
        raw = await request.body()
        if len(raw) > MAX_PUBLISH_BYTES:
            return _error(413, "frame_too_large", f"body is over {MAX_PUBLISH_BYTES} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "invalid_request", "body is not valid JSON")
        topic = body.get("topic") if isinstance(body, dict) else None
        data = body.get("data") if isinstance(body, dict) else None
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

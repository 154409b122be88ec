"""The runtime's loopback status endpoints: ``/healthz`` (the process answers),
``/readyz`` (200 when ready, 503 with the reasons otherwise), ``/status`` (everything)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .runtime import NodeRuntime


def health_app(runtime: NodeRuntime) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "node_id": runtime.identity.node_id})

    async def readyz(request: Request) -> Response:
        tree = runtime.readiness()
        return JSONResponse({"ready": tree["ready"], "reasons": tree["reasons"]},
                            status_code=200 if tree["ready"] else 503)

    async def status(request: Request) -> Response:
        return JSONResponse(runtime.status())

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/status", status)])

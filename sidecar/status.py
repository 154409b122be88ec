"""The sidecar's loopback status endpoint: ``GET /status``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .relay import Sidecar


def status_app(sidecar: Sidecar) -> Starlette:
    async def status(request: Request) -> Response:
        return JSONResponse(sidecar.status())

    return Starlette(routes=[Route("/status", status)])

"""REST routes for rollouts (docs/protocol.md "Rollouts (`/api/v1/rollouts`, issue 15)").

The body of ``POST /api/v1/rollouts`` is parsed once, at this boundary, by
``protocol/rollout.py`` :func:`parse_rollout` into a :class:`RolloutSpec`; anything off its
rules is 400 ``invalid_request`` naming the field, before anything is read or stored. The
request body is at most 1 MiB (routes.py). Every write is an operator's, audited by the
middleware (api/auth.py) and by the store (``rollout.start``/``pause``/``resume``/``abort``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.protocol.errors import BadFrame, InvalidRequest
from tether.protocol.rollout import parse_rollout

from ..services.rollouts import RolloutService, rollout_view
from .routes import _json_body, _operator, _query_int, _role


def _rollouts(request: Request) -> RolloutService:
    return request.app.state.rollouts  # type: ignore[no-any-return]


async def start_rollout(request: Request) -> Response:
    """POST /api/v1/rollouts → 202 with the rollout (operator)."""
    role = await _operator(request)
    try:
        spec = parse_rollout(await _json_body(request))
    except BadFrame as exc:
        raise InvalidRequest(exc.message) from None
    svc = _rollouts(request)
    rollout = await svc.create(spec, actor=role)
    return JSONResponse(await svc.get_view(rollout.rollout_id), status_code=202)


async def list_rollouts(request: Request) -> Response:
    """GET /api/v1/rollouts[?limit=N]: newest first, with counts, without nodes."""
    await _role(request)
    limit = _query_int(request, "limit", 100, lo=1, hi=1000)
    rows = await _rollouts(request).list_rollouts(limit=limit)
    return JSONResponse({"items": [rollout_view(r, with_nodes=False) for r in rows]})


async def get_rollout(request: Request) -> Response:
    await _role(request)
    return JSONResponse(await _rollouts(request).get_view(request.path_params["rollout_id"]))


async def control_rollout(request: Request) -> Response:
    """POST /api/v1/rollouts/{id}/pause|resume|abort → 202 with the rollout (operator)."""
    role = await _operator(request)
    svc = _rollouts(request)
    rollout_id = request.path_params["rollout_id"]
    action = request.url.path.rsplit("/", 1)[1]
    if action == "pause":
        await svc.pause(rollout_id, actor=role)
    elif action == "resume":
        await svc.resume(rollout_id, actor=role)
    else:
        await svc.abort(rollout_id, actor=role)
    return JSONResponse(await svc.get_view(rollout_id), status_code=202)


ROUTES = [
    Route("/api/v1/rollouts", start_rollout, methods=["POST"]),
    Route("/api/v1/rollouts", list_rollouts, methods=["GET"]),
    Route("/api/v1/rollouts/{rollout_id}", get_rollout, methods=["GET"]),
    Route("/api/v1/rollouts/{rollout_id}/pause", control_rollout, methods=["POST"]),
    Route("/api/v1/rollouts/{rollout_id}/resume", control_rollout, methods=["POST"]),
    Route("/api/v1/rollouts/{rollout_id}/abort", control_rollout, methods=["POST"]),
]

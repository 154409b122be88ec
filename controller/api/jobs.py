"""REST routes for jobs (docs/protocol.md §8 ``/api/v1/jobs``): one command over many nodes.

The body of ``POST /api/v1/jobs`` is parsed once, here, into a :class:`JobSpec`
(:func:`parse_job`); anything else is 400 ``invalid_request`` naming the field, before
anything is stored. Bounds: at most :data:`MAX_JOB_NODES` nodes (listed or selected), the
request body at most 1 MiB (routes.py), ``max_in_flight`` from 1 to ``MAX_JOB_NODES``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.protocol.errors import InvalidRequest
from tether.protocol.frames import valid_node_id

from ..domain.jobs import LIVENESS_STATES, MAX_JOB_NODES, OFFLINE_POLICIES, Selector
from ..services.jobs import JobService, JobSpec, job_view
from .routes import (
    MAX_TTL_S,
    _check_args,
    _json_body,
    _number,
    _operator,
    _query_int,
    _role,
    _str_map,
)


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


def parse_selector(body: dict[str, Any]) -> Selector:
    """``selector`` ({labels, liveness}) or ``nodes`` (a list of ids): exactly one."""
    selector, nodes = body.get("selector"), body.get("nodes")
    if (selector is None) == (nodes is None):
        raise InvalidRequest("give exactly one of 'selector' ({\"labels\": {...}, "
                             "\"liveness\": [...]}) and 'nodes' (a list of node ids)")
    if nodes is not None:
        if not isinstance(nodes, list) or not nodes or len(nodes) > MAX_JOB_NODES:
            raise InvalidRequest(f"'nodes' must be a list of 1 to {MAX_JOB_NODES} node ids")
        if not all(valid_node_id(n) for n in nodes):
            raise InvalidRequest("every id in 'nodes' must match [a-z0-9][a-z0-9-]{0,62}")
        if len(set(nodes)) != len(nodes):
            raise InvalidRequest("'nodes' lists a node twice")
        return Selector(nodes=tuple(nodes))
    if not isinstance(selector, dict) or not set(selector) <= {"labels", "liveness"}:
        raise InvalidRequest("'selector' must be an object with 'labels' and/or 'liveness'")
    labels = _str_map(selector.get("labels"), "selector.labels")
    liveness = selector.get("liveness")
    if liveness is not None and (
            not isinstance(liveness, list) or not liveness
            or not all(isinstance(s, str) and s in LIVENESS_STATES for s in liveness)):
        raise InvalidRequest("'selector.liveness' must be a non-empty list of "
                             f"{', '.join(LIVENESS_STATES)}")
    return Selector(labels=labels, liveness=None if liveness is None else frozenset(liveness))


def parse_job(body: dict[str, Any]) -> JobSpec:
    """The whole job request, checked (module docstring). Raises InvalidRequest."""
    known = {"selector", "nodes", "kind", "args", "offline", "max_in_flight", "ttl_s"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0][:64]!r}; a job takes "
                             f"{', '.join(sorted(known))}")
    selector = parse_selector(body)
    kind, args = _check_args(body.get("kind"), body.get("args", {}))
    offline = body.get("offline", "queue")
    if offline not in OFFLINE_POLICIES:
        raise InvalidRequest("'offline' must be 'queue' (hold the command until the node "
                             "returns), 'fail' (its part fails at once) or 'skip' (leave "
                             "the node out)")
    limit = body.get("max_in_flight")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or not 1 <= limit <= MAX_JOB_NODES):
        raise InvalidRequest(f"'max_in_flight' must be an integer from 1 to {MAX_JOB_NODES}")
    ttl = body.get("ttl_s")
    ttl_s = None if ttl is None else _number(ttl, "ttl_s", lo=0.001, hi=MAX_TTL_S)
    return JobSpec(selector=selector, kind=kind, args=args, offline=str(offline),
                   max_in_flight=limit, ttl_s=ttl_s)


async def submit_job(request: Request) -> Response:
    """POST /api/v1/jobs → 202 ``{"job_id", ...the job}`` (operator)."""
    role = await _operator(request)
    spec = parse_job(await _json_body(request))
    job = await _jobs(request).create(spec, actor=role)
    return JSONResponse(job_view(job), status_code=202)


async def list_jobs(request: Request) -> Response:
    """GET /api/v1/jobs[?limit=N]: newest first, with summaries, without nodes."""
    await _role(request)
    limit = _query_int(request, "limit", 100, lo=1, hi=1000)
    rows = await _jobs(request).list_jobs(limit=limit)
    return JSONResponse({"items": [job_view(r, with_nodes=False) for r in rows]})


async def get_job(request: Request) -> Response:
    await _role(request)
    return JSONResponse(job_view(await _jobs(request).get(request.path_params["job_id"])))


async def cancel_job(request: Request) -> Response:
    """POST /api/v1/jobs/{id}/cancel → 202 with the job (operator)."""
    role = await _operator(request)
    job = await _jobs(request).cancel(request.path_params["job_id"], actor=role)
    return JSONResponse(job_view(job), status_code=202)


ROUTES = [
    Route("/api/v1/jobs", submit_job, methods=["POST"]),
    Route("/api/v1/jobs", list_jobs, methods=["GET"]),
    Route("/api/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/api/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
]

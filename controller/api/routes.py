"""REST API under /api/v1 and the enrollment endpoint (PROTOCOL.md §8).

Every error body has one shape: ``{"error": {"code": "<snake_case>", "message": "..."}}``.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.common import __version__
from tether.common.bodies import read_json_object
from tether.common.tasks import live_tasks
from tether.protocol.deliver import command_args, command_kind
from tether.protocol.errors import (
    BadFrame,
    InvalidRequest,
    NotFound,
    TetherError,
    http_status_for,
)
from tether.protocol.frames import COMMAND_STATES, valid_node_id
from tether.protocol.keys import check_ed25519_public_key
from tether.protocol.values import INT64_MAX

from ..domain.jobs import LIVENESS_STATES, matches
from ..domain.roles import Caller
from ..services.admission import Admission
from ..services.bus import EventBus
from ..services.commands import CommandService
from ..services.monitor import MonitorStore
from ..services.nodes import NodeViews
from ..services.peek import Peeks
from ..services.presence import Presence
from ..services.probe import CachedStoreFigures, StoreProbe
from ..services.router import Router
from ..services.runstate import RunState
from ..store.auth import join_token_id
from ..views import (
    command_view,
    dead_letter_view,
    iso,
    log_item,
    node_event_view,
    session_view,
)
from .auth import require_role

if TYPE_CHECKING:
    from ..store.controller_store import ControllerStore, LogPage
    from ..store.records import NodeRecord

MAX_BODY_BYTES = 1 << 20
MAX_TTL_S = 365 * 86400
KIND_RE_MAX = 64


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _tether_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TetherError)
    return error_response(exc.http_status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail).lower())


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(http_status_for("internal"), "internal",
                          "internal error; see the controller log")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    TetherError: _tether_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}


class LoopLag(Protocol):
    """The event loop's lag as last measured, and the sessions the downlink check woke
    (services/sweeper.py: nudges lost, or raced)."""

    loop_lag_ms: float
    loop_lag_max_ms: float
    downlink_wakes_total: int


@dataclass(frozen=True, slots=True, eq=False)
class ApiServices:
    """What the REST API uses, built once by app.py (``app.state.api``). Commands go
    through ``commands`` only; the store serves the rest (tokens, enrollment, nodes and
    their history); live sessions are reached through ``router`` and seen through
    ``presence``. ``edge_pending()`` is (evt, log) bytes awaiting the store, all sessions."""

    store: ControllerStore
    commands: CommandService
    nodes: NodeViews
    router: Router
    bus: EventBus
    presence: Presence
    monitor: MonitorStore
    peeks: Peeks  # a node's live session and monitor packets from the replica holding it
    admission: Admission
    probe: StoreProbe
    run: RunState
    loop_lag: LoopLag
    edge_pending: Callable[[], tuple[int, int]]
    durability: str
    store_figures: CachedStoreFigures  # what /metrics reads from the store, cached
    is_leader: Callable[[], bool] = lambda: True  # runs the fleet-wide singletons now
    # (metric, type, value) of the replica's NATS link, router and bus; None without --bus
    nats_samples: Callable[[], list[tuple[str, str, int]]] | None = None
    replica_id: str = ""  # this replica's (health names it: who answered behind a balancer)


def _ctl(request: Request) -> ApiServices:
    return request.app.state.api  # type: ignore[no-any-return]


async def _role(request: Request, at_least: str = "viewer") -> Caller:
    """The caller, whose token is valid and whose role is ``at_least`` or above: 401
    ``unauthorized`` or 403 ``forbidden`` otherwise (api/auth.py). Every route calls it
    (or :func:`_operator`): reads with ``viewer``, commands with ``operator``, tokens and
    node management with ``admin``."""
    return await require_role(request, at_least)


async def _operator(request: Request) -> str:
    """The caller as the audit log names it; raises 401/403 unless its token is valid and
    its role is ``operator`` or above (what running commands, jobs and shells needs)."""
    return (await require_role(request, "operator")).actor


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read through the limit and parsed strictly
    (:mod:`tether.common.bodies`); an empty body is ``{}``."""
    return await read_json_object(request, max_bytes=MAX_BODY_BYTES, empty={})


_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")  # str.isdigit() also passes "١٢" and "²"


def _query_int(request: Request, name: str, default: int, *, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an integer from ``lo`` to ``hi`` (``default`` when
    absent). Only ASCII digits count; anything else is 400 ``invalid_request``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if _ASCII_DIGITS.fullmatch(raw) is None or not lo <= int(raw) <= hi:
        raise InvalidRequest(f"{name!r} must be an integer from {lo} to {hi}")
    return int(raw)


def _str_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256
            for k, v in value.items()) or len(value) > 64:
        raise InvalidRequest(f"{name!r} must be an object of at most 64 string keys and "
                             "string values")
    return dict(value)


def _number(value: Any, name: str, *, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidRequest(f"{name!r} must be a number from {lo:g} to {hi:g}")
    return float(value)


# -- routes ---------------------------------------------------------------------------------

async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__,
                         "controller_id": _ctl(request).run.controller_id,
                         "replica_id": _ctl(request).replica_id,  # which one answered
                         "time_ms": int(time.time() * 1000)})


async def create_join_token(request: Request) -> Response:
    role = (await _role(request, "admin")).actor
    body = await _json_body(request)
    ttl_s = _number(body.get("ttl_s", 3600), "ttl_s", lo=1, hi=MAX_TTL_S)
    uses_raw = body.get("uses", 1)
    if isinstance(uses_raw, bool) or not isinstance(uses_raw, int) or not 1 <= uses_raw <= 10**6:
        raise InvalidRequest("'uses' must be an integer from 1 to 1000000")
    labels = _str_map(body.get("labels"), "labels")
    token, expires_at = await _ctl(request).store.create_join_token(
        ttl_s=ttl_s, uses=uses_raw, labels=labels, actor=role)
    return JSONResponse({"token": token, "expires_at": iso(expires_at), "uses": uses_raw,
                         "token_id": join_token_id(token)}, status_code=201)


async def enroll(request: Request) -> Response:
    """POST /v1/edge/enroll (PROTOCOL.md §8)."""
    body = await _json_body(request)
    token, node_id, key = body.get("join_token"), body.get("node_id"), body.get("public_key")
    if not isinstance(token, str) or not token:
        raise InvalidRequest("'join_token' must be a non-empty string")
    if not valid_node_id(node_id):
        raise InvalidRequest("'node_id' must match [a-z0-9][a-z0-9-]{0,62}")
    if not isinstance(key, str):
        raise InvalidRequest("'public_key' must be base64url of 32 raw Ed25519 bytes")
    try:
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest("'public_key' is not valid base64url") from None
    try:  # small-order and non-canonical keys would let anyone sign (issue 11 item 1)
        raw = check_ed25519_public_key(raw)
    except BadFrame as exc:
        raise InvalidRequest(f"'public_key' is refused: {exc.message}; generate a fresh key "
                             "with 'tether node enroll'") from None
    labels = _str_map(body.get("labels"), "labels")
    ctl = _ctl(request)
    await ctl.store.enroll(join_token=token, node_id=str(node_id), public_key=raw,
                           labels=labels)
    return JSONResponse({"node_id": node_id, "controller_id": ctl.run.controller_id},
                        status_code=201)


async def list_nodes(request: Request) -> Response:
    """GET /api/v1/nodes[?label=K=V ...&liveness=S,S]: every node, or those holding
    every ``label`` and in one of the ``liveness`` states (domain/jobs.py Rule 1)."""
    await _role(request)
    ctl = _ctl(request)
    want_labels, want_liveness = _node_filter(request)
    views = [ctl.nodes.view(r) for r in await ctl.store.list_nodes()]
    return JSONResponse({"items": [v for v in views if matches(
        v["labels"], v["liveness"], want_labels=want_labels, want_liveness=want_liveness)]})


def _node_filter(request: Request) -> tuple[dict[str, str], frozenset[str] | None]:
    labels: dict[str, str] = {}
    for item in request.query_params.getlist("label")[:64]:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"'label' must be KEY=VALUE, got {item[:64]!r}")
        labels[key] = value
    raw = request.query_params.get("liveness")
    if raw is None:
        return labels, None
    states = frozenset(raw.split(","))
    if not states <= set(LIVENESS_STATES):
        raise InvalidRequest(f"'liveness' must be a comma-separated list of "
                             f"{', '.join(LIVENESS_STATES)}")
    return labels, states


async def _node_row(request: Request) -> NodeRecord:
    node_id = request.path_params["node_id"]
    row = await _ctl(request).store.get_node(node_id)
    if row is None:
        raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes list'")
    return row


async def get_node(request: Request) -> Response:
    await _role(request)
    return JSONResponse(await _ctl(request).nodes.view_one(await _node_row(request)))


async def _set_enabled(request: Request, enabled: bool) -> Response:
    role = (await _role(request, "admin")).actor
    ctl = _ctl(request)
    node_id = request.path_params["node_id"]
    await ctl.store.set_enabled(node_id, enabled, actor=role)
    if not enabled:
        await ctl.router.disable(node_id)
    row = await _node_row(request)
    return JSONResponse(ctl.nodes.view(row))


async def disable_node(request: Request) -> Response:
    """Close the node's session with 4403 and refuse its hellos until enabled again."""
    return await _set_enabled(request, False)


async def enable_node(request: Request) -> Response:
    return await _set_enabled(request, True)


async def node_sessions(request: Request) -> Response:
    await _role(request)
    row = await _node_row(request)
    items = await _ctl(request).store.sessions(row.node_id)
    return JSONResponse({"items": [session_view(s) for s in items]})


async def node_events(request: Request) -> Response:
    await _role(request)
    row = await _node_row(request)
    limit = _query_int(request, "limit", 100, lo=1, hi=10_000)
    items = await _ctl(request).store.node_events(row.node_id, limit=limit)
    return JSONResponse({"items": [node_event_view(e) for e in items]})


async def node_dead_letters(request: Request) -> Response:
    """GET /api/v1/nodes/{id}/dead-letters[?limit=N]: the poison frames this node sent
    (docs/protocol.md §5), newest first, and how many it ever sent (``total``; only the
    newest are kept)."""
    await _role(request)
    row = await _node_row(request)
    limit = _query_int(request, "limit", 100, lo=1, hi=10_000)
    rows, total = await _ctl(request).store.dead_letters(row.node_id, limit=limit)
    return JSONResponse({"total": total, "items": [dead_letter_view(r) for r in rows]})


async def node_logs(request: Request) -> Response:
    """GET /api/v1/nodes/{id}/logs[?source=APP&after=ID&limit=N&max_bytes=B]: a page of
    app and runtime output (:func:`_log_page`)."""
    await _role(request)
    row = await _node_row(request)
    after = _query_int(request, "after", 0, lo=0, hi=INT64_MAX)
    limit, max_bytes = _log_page_bounds(request)
    rows = await _ctl(request).store.node_logs(row.node_id,
                                               source=request.query_params.get("source"),
                                               after=after, limit=limit, max_bytes=max_bytes)
    return _log_page(rows, after)


LOG_PAGE_ITEMS = 1000  # chunks in a log page by default (?limit=, at most 10,000)
LOG_PAGE_BYTES = 1 << 20  # chunk bytes in a log page by default (?max_bytes=, at most 16 MiB)


def _log_page_bounds(request: Request) -> tuple[int, int]:
    """A log page's ``limit`` (chunks) and ``max_bytes`` (their data) from the query."""
    return (_query_int(request, "limit", LOG_PAGE_ITEMS, lo=1, hi=10_000),
            _query_int(request, "max_bytes", LOG_PAGE_BYTES, lo=1, hi=16 << 20))


def _log_page(rows: LogPage, after: int) -> Response:
    """A page of log chunks (docs/protocol.md §6): ``items`` in id order, at most the page's
    count and bytes (though always one chunk, however large); ``next_after`` to ask for the
    next page; ``more`` true when more chunks were stored after this page when it was read,
    false when the reader has caught up (a live command may still add more later)."""
    items = [log_item(r) for r in rows]
    return JSONResponse({"items": items, "next_after": items[-1]["id"] if items else after,
                         "more": rows.more})


async def node_monitor(request: Request) -> Response:
    """GET /api/v1/nodes/{id}/monitor[?topic=T]: the last packets per topic, from the
    replica holding the node (services/peek.py); ``cut`` says how many of its packets did
    not fit its reply (absent when none)."""
    await _role(request)
    row = await _node_row(request)
    topic = request.query_params.get("topic")
    topics, cut = await _ctl(request).peeks.monitor(row.node_id, topic)
    body: dict[str, Any] = {"topics": topics}
    if cut:
        body["cut"] = cut
    return JSONResponse(body)


async def submit_command(request: Request) -> Response:
    """POST /api/v1/nodes/{id}/commands. The body is checked whole before anything is
    stored (400 ``invalid_request``), and a command whose ``cmd.deliver`` frame would be
    over the node's frame cap is refused (413 ``frame_too_large``): the session's cap when
    the node is connected, else the controller's (docs/protocol.md §6)."""
    role = await _operator(request)
    node_id = request.path_params["node_id"]
    body = await _json_body(request)
    kind, args = _check_args(body.get("kind"), body.get("args", {}))
    ttl = body.get("ttl_s")
    ttl_s = None if ttl is None else _number(ttl, "ttl_s", lo=0.001, hi=MAX_TTL_S)
    idem = request.headers.get("idempotency-key")
    if idem is not None and not 0 < len(idem) <= 128:
        raise InvalidRequest("'Idempotency-Key' must be 1 to 128 characters")
    offline = body.get("offline", "queue")
    if offline not in ("queue", "fail"):
        raise InvalidRequest("'offline' must be 'queue' (hold until the node returns or "
                             "ttl_s runs out) or 'fail' (refuse unless the node is online)")
    command, created = await _ctl(request).commands.submit(
        node_id, kind=kind, args=args, ttl_s=ttl_s, idem_key=idem, actor=role,
        offline=offline)
    view = command_view(command)
    return JSONResponse(view, status_code=202 if created else 200)


def _check_args(kind: object, args: object) -> tuple[str, dict[str, Any]]:
    """The command's kind and a checked copy of its args (``protocol/deliver.py``: plain
    values, the shapes of the kinds this controller knows; others are the node's to
    judge). Raises InvalidRequest naming the field."""
    try:
        checked_kind = command_kind(kind)
        return checked_kind, command_args(checked_kind, args)
    except BadFrame as exc:
        raise InvalidRequest(exc.message) from None


async def list_commands(request: Request) -> Response:
    """GET /api/v1/commands?node_id=&state=&limit= : newest first, with counts by state."""
    await _role(request)
    q = request.query_params
    limit = _query_int(request, "limit", 100, lo=1, hi=10_000)
    state = q.get("state")
    if state is not None and state not in COMMAND_STATES:
        raise InvalidRequest(f"'state' must be one of {', '.join(COMMAND_STATES)}")
    rows, counts = await _ctl(request).commands.list_commands(
        node_id=q.get("node_id"), state=state, limit=limit)
    return JSONResponse({"items": [command_view(r) for r in rows], "counts": counts})


async def get_command(request: Request) -> Response:
    await _role(request)
    row = await _ctl(request).commands.get(request.path_params["command_id"])
    return JSONResponse(command_view(row))


async def control_command(request: Request) -> Response:
    """POST /api/v1/commands/{id}/cancel|pause|resume: pushed to the node at once."""
    role = await _operator(request)
    action = request.url.path.rsplit("/", 1)[1]
    row = await _ctl(request).commands.control(request.path_params["command_id"], action,
                                               actor=role)
    return JSONResponse(command_view(row), status_code=202)


async def command_logs(request: Request) -> Response:
    """GET /api/v1/commands/{id}/logs[?after=ID&limit=N&max_bytes=B]: a page of output
    (:func:`_log_page`)."""
    await _role(request)
    command_id = request.path_params["command_id"]
    after = _query_int(request, "after", 0, lo=0, hi=INT64_MAX)
    limit, max_bytes = _log_page_bounds(request)
    rows = await _ctl(request).commands.logs(command_id, after=after, limit=limit,
                                             max_bytes=max_bytes)  # 404 when unknown
    return _log_page(rows, after)


async def diag(request: Request) -> Response:
    """GET /api/v1/diag: what `tether diag controller` shows."""
    await _role(request)
    ctl = _ctl(request)
    by_liveness: dict[str, int] = {}
    for row in await ctl.store.list_nodes():
        state = ctl.nodes.view(row)["liveness"]
        by_liveness[state] = by_liveness.get(state, 0) + 1
    read_ms, write_ms = await ctl.probe.round_trip_ms()  # one group commit, fsync included
    db = ctl.probe.counters()
    dead_letters_total = await ctl.store.dead_letters_total()
    gate, mon, bus = ctl.admission.hello, ctl.monitor, ctl.bus.stats()
    pending_evt_bytes, pending_log_bytes = ctl.edge_pending()
    return JSONResponse({
        "controller_id": ctl.run.controller_id, "version": __version__,
        "uptime_s": round(time.time() - ctl.run.started_at, 1),
        "sessions": {"open": len(ctl.presence), "handshaking": ctl.admission.running,
                     "waiting": ctl.admission.waiting,
                     "refused_total": ctl.admission.refused_total,
                     "nodes_by_liveness": by_liveness},
        "store": {"read_ms": round(read_ms, 3), "commit_ms": round(write_ms, 3),
                  "write_queue": db["write_queue"], "batches_total": db["batches_total"],
                  "writes_total": db["writes_total"],
                  "durability": ctl.durability},
        "ws": {"subscribers": bus.subscribers, "cut_off_total": bus.cut_off_total,
               "events_published_total": bus.published_total,
               "unencodable_total": bus.unencodable_total},
        "event_loop": {"lag_ms": ctl.loop_lag.loop_lag_ms,
                       "lag_max_ms": ctl.loop_lag.loop_lag_max_ms,
                       "tasks": live_tasks()},  # a task leak grows it (the soak judges it)
        "cluster": {"leader": ctl.is_leader(),
                    "downlink_wakes_total": ctl.loop_lag.downlink_wakes_total,
                    "nats": None if ctl.nats_samples is None else {
                        name.removeprefix("tether_nats_"): value
                        for name, _, value in ctl.nats_samples()}},
        "edge": {"dead_letters_total": dead_letters_total,
                 "pending_evt_bytes": pending_evt_bytes,
                 "pending_log_bytes": pending_log_bytes,
                 "prehello_waiting": gate.waiting,
                 "prehello_expired_total": gate.expired_total,
                 "prehello_evicted_total": gate.evicted_total},
        "http": ctl.run.http_counters(),
        "monitor": {"bytes": mon.bytes_total, "max_bytes_total": mon.max_bytes_total,
                    "dropped_packets_total": mon.dropped_packets_total,
                    "dropped_bytes_total": mon.dropped_bytes_total,
                    "dropped_topics_total": mon.dropped_topics_total},
        # per budget ('events', 'logs', 'node_logs'), summed over nodes: what is kept
        # (items, bytes) and what was pruned or refused since the node enrolled
        "quotas": await ctl.store.node_usage(),
    })


ROUTES = [
    Route("/api/v1/health", health, methods=["GET"]),
    Route("/api/v1/join-tokens", create_join_token, methods=["POST"]),
    Route("/api/v1/nodes", list_nodes, methods=["GET"]),
    Route("/api/v1/nodes/{node_id}", get_node, methods=["GET"]),
    Route("/api/v1/nodes/{node_id}/sessions", node_sessions, methods=["GET"]),
    Route("/api/v1/nodes/{node_id}/disable", disable_node, methods=["POST"]),
    Route("/api/v1/nodes/{node_id}/enable", enable_node, methods=["POST"]),
    Route("/api/v1/nodes/{node_id}/events", node_events, methods=["GET"]),
    Route("/api/v1/nodes/{node_id}/monitor", node_monitor, methods=["GET"]),
    Route("/api/v1/nodes/{node_id}/logs", node_logs, methods=["GET"]),
    Route("/api/v1/nodes/{node_id}/dead-letters", node_dead_letters, methods=["GET"]),
    Route("/api/v1/nodes/{node_id}/commands", submit_command, methods=["POST"]),
    Route("/api/v1/commands", list_commands, methods=["GET"]),
    Route("/api/v1/commands/{command_id}", get_command, methods=["GET"]),
    Route("/api/v1/commands/{command_id}/cancel", control_command, methods=["POST"]),
    Route("/api/v1/commands/{command_id}/pause", control_command, methods=["POST"]),
    Route("/api/v1/commands/{command_id}/resume", control_command, methods=["POST"]),
    Route("/api/v1/commands/{command_id}/logs", command_logs, methods=["GET"]),
    Route("/api/v1/diag", diag, methods=["GET"]),
]


"""Operator tokens, the audit log, join tokens and node removal under /api/v1 (issue 13).

Who may call what (docs/security.md): every route here needs ``admin``, except
``GET /api/v1/whoami`` (any valid token: what a UI shows, and which buttons it offers).
Bodies are parsed once into frozen values (:class:`TokenRequest`) with their bounds;
anything else is 400 ``invalid_request`` naming the field.
"""

from __future__ import annotations

import math
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.protocol.errors import InvalidRequest

from ..domain.roles import ROLES
from ..store.auth import AuditRecord, JoinTokenRecord, TokenRecord
from ..views import iso
from .routes import MAX_TTL_S, _ctl, _json_body, _query_int, _role

MAX_TOKEN_NAME = 64
TOKEN_FIELDS = frozenset({"role", "name", "ttl_s"})


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """``POST /api/v1/tokens`` {"role", "name"?, "ttl_s"?}: ``role`` one of
    ``domain.roles.ROLES``; ``name`` 1 to 64 printable characters, or absent; ``ttl_s`` a
    number of seconds from 1 to a year, or absent or null for a token that never expires."""

    role: str
    name: str | None
    ttl_s: float | None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TokenRequest:
        unknown = sorted(set(body) - TOKEN_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0][:40]!r}; a token has 'role', "
                                 "'name' and 'ttl_s'")
        role = body.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(f"'role' must be one of {', '.join(ROLES)}")
        name = body.get("name")
        if name is not None and (
                not isinstance(name, str) or not 1 <= len(name) <= MAX_TOKEN_NAME
                or any(unicodedata.category(c)[0] == "C" for c in name)):
            raise InvalidRequest(f"'name' must be 1 to {MAX_TOKEN_NAME} printable characters")
        ttl = body.get("ttl_s")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                                or not math.isfinite(ttl) or not 1 <= ttl <= MAX_TTL_S):
            raise InvalidRequest(f"'ttl_s' must be a number of seconds from 1 to {MAX_TTL_S}, "
                                 "or null for a token that does not expire")
        return cls(role=role, name=name, ttl_s=None if ttl is None else float(ttl))


def token_view(t: TokenRecord, now: float) -> dict[str, Any]:
    state = ("revoked" if t.revoked_at is not None else
             "expired" if t.expires_at is not None and t.expires_at <= now else "active")
    return {"token_id": t.token_id, "role": t.role, "name": t.name, "state": state,
            "created_at": iso(t.created_at), "expires_at": iso(t.expires_at),
            "revoked_at": iso(t.revoked_at)}


def join_token_view(t: JoinTokenRecord) -> dict[str, Any]:
    return {"token_id": t.token_id, "created_at": iso(t.created_at),
            "expires_at": iso(t.expires_at), "uses_left": t.uses_left, "labels": t.labels}


def audit_view(a: AuditRecord) -> dict[str, Any]:
    return {"id": a.id, "at": iso(a.at), "actor": a.actor, "role": a.role,
            "token_id": a.token_id, "action": a.action, "target": a.target,
            "status": a.status, "detail": a.detail}


async def whoami(request: Request) -> Response:
    """GET /api/v1/whoami: the caller's token id, name and role."""
    caller = await _role(request)
    return JSONResponse({"token_id": caller.token_id, "name": caller.name,
                         "role": caller.role})


async def create_token(request: Request) -> Response:
    """POST /api/v1/tokens: 201 {"token", "token_id", "role", ...}; the secret is shown
    this once (only its SHA-256 is kept)."""
    caller = await _role(request, "admin")
    want = TokenRequest.parse(await _json_body(request))
    token, record = await _ctl(request).store.create_operator_token(
        role=want.role, name=want.name, ttl_s=want.ttl_s, actor=caller)
    return JSONResponse({"token": token, "token_id": record.token_id, "role": record.role,
                         "name": record.name, "expires_at": iso(record.expires_at)},
                        status_code=201)


async def list_tokens(request: Request) -> Response:
    """GET /api/v1/tokens: every operator token, active, expired or revoked (no secrets)."""
    await _role(request, "admin")
    items = await _ctl(request).store.list_operator_tokens()
    now = time.time()
    return JSONResponse({"items": [token_view(t, now) for t in items]})


async def revoke_token(request: Request) -> Response:
    """DELETE /api/v1/tokens/{token_id}: from this answer on, the token gets 401."""
    caller = await _role(request, "admin")
    token_id = request.path_params["token_id"]
    await _ctl(request).store.revoke_operator_token(token_id, actor=caller)
    return JSONResponse({"token_id": token_id, "state": "revoked"})


async def list_join_tokens(request: Request) -> Response:
    """GET /api/v1/join-tokens: join tokens that can still enroll (no secrets)."""
    await _role(request, "admin")
    items = await _ctl(request).store.list_join_tokens()
    return JSONResponse({"items": [join_token_view(t) for t in items]})


async def revoke_join_token(request: Request) -> Response:
    """DELETE /api/v1/join-tokens/{token_id}: it enrolls nothing more."""
    caller = await _role(request, "admin")
    token_id = request.path_params["token_id"]
    await _ctl(request).store.revoke_join_token(token_id, actor=caller)
    return JSONResponse({"token_id": token_id, "state": "revoked"})


async def delete_node(request: Request) -> Response:
    """DELETE /api/v1/nodes/{node_id}: remove the node, its key and all its data
    (store/auth.py ``purge_node``), then close its live session with 4403 on whichever
    replica holds it. Enrolling the id again (a join token, any key) then works."""
    caller = await _role(request, "admin")
    ctl = _ctl(request)
    node_id = request.path_params["node_id"]
    await ctl.store.delete_node(node_id, actor=caller)
    closed = await ctl.router.disable(node_id)
    return JSONResponse({"node_id": node_id, "deleted": True, "session_closed": closed})


async def audit(request: Request) -> Response:
    """GET /api/v1/audit[?before=ID&limit=N]: audit records newest first; ``next_before``
    asks for the next (older) page, null at the end."""
    await _role(request, "admin")
    limit = _query_int(request, "limit", 100, lo=1, hi=1000)
    before = (None if request.query_params.get("before") is None
              else _query_int(request, "before", 0, lo=1, hi=(1 << 63) - 1))
    items = await _ctl(request).store.audit_page(before=before, limit=limit)
    return JSONResponse({"items": [audit_view(a) for a in items],
                         "next_before": items[-1].id if len(items) == limit else None})


ROUTES = [
    Route("/api/v1/tokens", create_token, methods=["POST"]),
    Route("/api/v1/tokens", list_tokens, methods=["GET"]),
    Route("/api/v1/tokens/{token_id}", revoke_token, methods=["DELETE"]),
    Route("/api/v1/join-tokens", list_join_tokens, methods=["GET"]),
    Route("/api/v1/join-tokens/{token_id}", revoke_join_token, methods=["DELETE"]),
    Route("/api/v1/nodes/{node_id}", delete_node, methods=["DELETE"]),
    Route("/api/v1/audit", audit, methods=["GET"]),
    Route("/api/v1/whoami", whoami, methods=["GET"]),
]

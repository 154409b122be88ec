"""Who may call the REST API, and the audit record of every mutating request.

:func:`require_role` is the one check every route makes: 401 ``unauthorized`` for a
missing, unknown, revoked or expired Bearer token; 403 ``forbidden`` for a role below the
route's (roles: ``domain/roles.py``). It leaves the caller in the request's scope, where
:class:`AuditMiddleware` finds it: every POST, PUT, PATCH or DELETE made with a valid token
is recorded (token, role, method and route, target, status) before its answer is sent,
refusals (403) and failures included, so the record exists when the client sees the answer.
Requests without a valid token are not recorded (a flood of them must not grow the store);
they are counted in the controller's HTTP counters like any 4xx.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.protocol.errors import AuthError

from ..domain.roles import Caller, role_at_least

logger = logging.getLogger(__name__)

CALLER_KEY = "tether.caller"  # where require_role leaves the caller in the ASGI scope
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def bearer_token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def require_role(request: Request, at_least: str) -> Caller:
    """The caller, when its token is valid and its role is ``at_least`` or above.

    Raises AuthError: 401 ``unauthorized`` (no token, or unknown, revoked, expired), 403
    ``forbidden`` (a valid token whose role is too low)."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise AuthError("missing operator token: send 'Authorization: Bearer <token>' "
                        "(see <data-dir>/admin.token)", code="unauthorized")
    caller, why = await request.app.state.api.store.operator_caller(token)
    if caller is None:
        raise AuthError(f"operator token is not valid for this controller ({why})",
                        code="unauthorized")
    request.scope[CALLER_KEY] = caller
    if not role_at_least(caller.role, at_least):
        raise AuthError(f"this needs the {at_least!r} role or above; the token "
                        f"{caller.token_id} is {caller.role!r}", code="forbidden")
    return caller


def _action(scope: Scope) -> tuple[str, str | None]:
    """("METHOD /route/{template}", target) of a request: the target is its path
    parameters' values (a node, command or token id), or None."""
    route = scope.get("route")
    path = getattr(route, "path", None) or scope.get("path", "")
    params: dict[str, Any] = scope.get("path_params") or {}
    target = ",".join(str(v) for v in params.values()) or None
    return f"{scope.get('method', '')} {path}", target


class AuditMiddleware:
    """Pure ASGI: records each mutating HTTP request a valid token made (module doc).
    Everything else (GETs, WebSockets, lifespan) passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in MUTATING:
            await self.app(scope, receive, send)
            return
        recorded = False

        async def record(status: int) -> None:
            nonlocal recorded
            caller = scope.get(CALLER_KEY)
            if recorded or not isinstance(caller, Caller):
                return
            recorded = True
            action, target = _action(scope)
            try:
                await scope["app"].state.api.store.record_request(caller, action, target,
                                                                  status)
            except Exception:  # the request's own effect is committed: answer it anyway
                logger.exception("audit record not written", extra={
                    "action": action, "target": target, "status": status})

        async def audited_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            await record(500)
            raise

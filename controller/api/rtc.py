"""REST for the media plane (docs/protocol.md "Media plane signalling"):
``POST /api/v1/rtc/links`` grants two nodes a peer, for ``tether cp`` node to node.

Body ``{"a": node_id, "b": node_id}`` (``a`` offers, ``b`` is the peer's node end),
parsed here; anything else is 400 ``invalid_request``. Operator or above; audited like
every mutation (api/auth.py). 201 ``{"peer_session_id", "a", "b", "expires_at"}``; 409
``node_offline`` unless both nodes have a live session (the grant travels to each node's
session as an ``rtc.link`` frame: services/rtc.py).

``GET /api/v1/rtc/config`` (operator or above: it may hold a TURN credential) answers the
dashboard's ICE settings, ``{"ice_servers": [RTCIceServer...], "host_addresses": [IP...]}``
(``--rtc-ice-server``, empty by default: the browser offers host candidates only;
``--rtc-host-address``: the page trickles only host candidates from these, none: all).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.protocol.errors import InvalidRequest

from ..config import ControllerConfig
from ..services.rtc import RtcService
from ..views import iso
from .routes import _json_body, _operator


def _rtc(request: Request) -> RtcService:
    return request.app.state.rtc  # type: ignore[no-any-return]


async def create_link(request: Request) -> Response:
    """POST /api/v1/rtc/links → 201 (module docstring)."""
    await _operator(request)
    body = await _json_body(request)
    unknown = sorted(set(body) - {"a", "b"})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0][:64]!r}; a link takes 'a' and 'b'")
    link = await _rtc(request).link(body.get("a"), body.get("b"))  # type: ignore[arg-type]
    return JSONResponse({**link, "expires_at": iso(link["expires_at"])}, status_code=201)


def page_config(config: ControllerConfig) -> dict[str, object]:
    """What ``GET /api/v1/rtc/config`` answers, computed once from the settings."""
    return {"ice_servers": ice_servers(config),
            "host_addresses": list(config.rtc_host_addresses)}


def ice_servers(config: ControllerConfig) -> list[dict[str, object]]:
    """The browser's ``RTCConfiguration.iceServers`` from the controller's settings: one
    entry per URL, TURN entries with the username and credential when set."""
    out: list[dict[str, object]] = []
    for url in config.rtc_ice_servers:
        server: dict[str, object] = {"urls": [url]}
        if url.startswith("turn") and config.rtc_ice_username is not None:
            server["username"] = config.rtc_ice_username
            server["credential"] = config.rtc_ice_credential or ""
        out.append(server)
    return out


async def rtc_config(request: Request) -> Response:
    """GET /api/v1/rtc/config → 200 (module docstring)."""
    await _operator(request)
    return JSONResponse(getattr(request.app.state, "rtc_page_config",
                                {"ice_servers": [], "host_addresses": []}))


ROUTES = [Route("/api/v1/rtc/links", create_link, methods=["POST"]),
          Route("/api/v1/rtc/config", rtc_config, methods=["GET"])]

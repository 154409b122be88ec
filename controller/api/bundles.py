"""REST routes for bundles (docs/protocol.md §8 ``/api/v1/bundles``).

* ``POST /api/v1/bundles`` (``operator``): the body is the bundle FILE
  (``application/octet-stream``), streamed through the controller's size limit and checked
  at the boundary (services/bundles.py); 201 ``{"name", "version", "sha256", "size"}``
  for a new (name, version), 200 with the same for a re-publish of the same file.
* ``GET /api/v1/bundles[?name=&limit=&before=]`` (``viewer``): newest first, paged by
  ``before`` (the ``next_before`` of the previous page).
* ``GET /api/v1/bundles/{name}/{version}`` (``viewer``): the metadata, the manifest and
  the signatures.
* ``GET /api/v1/bundles/{name}/{version}/file``: the file, for an ``operator`` token or
  for an enrolled, enabled node signing as itself (``Authorization: Tether-Node``,
  protocol/node_http.py). One ``Range: bytes=`` range at most (:func:`parse_range`):
  206 with ``Content-Range``; 416 ``range_not_satisfiable`` for a range that is malformed,
  multiple, or starts past the end.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tether.common.bodies import loads_strict
from tether.protocol.errors import AuthError, InvalidRequest, TetherError
from tether.protocol.node_http import parse_node_authorization
from tether.protocol.values import INT64_MAX

from ..services.bundles import NAME_RE, BundleService
from ..store.bundles import BundleRecord
from ..views import iso
from .routes import _ctl, _operator, _query_int, _role, error_response

_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")
_VERSION = re.compile(r"[0-9]{1,19}")


class RangeNotSatisfiable(TetherError):
    default_code = "range_not_satisfiable"


def _bundles(request: Request) -> BundleService:
    return request.app.state.bundles  # type: ignore[no-any-return]


def bundle_view(record: BundleRecord, *, with_manifest: bool = False) -> dict[str, Any]:
    """A bundle as the API answers it: ``sha256`` and ``size`` are the bundle file's (what
    the download gives); ``key_ids`` are declared by the file, not verified."""
    view: dict[str, Any] = {
        "name": record.name, "version": record.version, "kind": record.kind,
        "sha256": record.sha256, "size": record.size, "key_ids": list(record.key_ids),
        "publisher": record.publisher, "published_at": iso(record.published_at),
    }
    if with_manifest:
        view["manifest"] = loads_strict(record.manifest)
        view["signatures"] = loads_strict(record.signatures)
    return view


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a ``Range`` header over a file of ``size``
    bytes (RFC 9110 §14.1.2, one range): None for no header. A last byte past the end is
    cut to the end; a suffix ``bytes=-N`` is the last N bytes (all of them when N >=
    size). Raises RangeNotSatisfiable for anything else: another unit, several ranges,
    ``bytes=-0``, first > last, or a first byte at or past the end."""
    if header is None:
        return None
    found = _RANGE.fullmatch(header.strip())
    if found is None or found.group(0) == "bytes=-":
        raise RangeNotSatisfiable("'Range' must be one 'bytes=FIRST-[LAST]' or "
                                  "'bytes=-SUFFIX' range")
    first, last = found.groups()
    if not first:  # a suffix
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable("'Range: bytes=-0' asks for no bytes")
        return max(size - n, 0), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"the range {header.strip()[:64]!r} is outside the file's "
                                  f"{size} bytes")
    return start, end


async def _file_caller(request: Request) -> str:
    """Who downloads: a node signing as itself (``Tether-Node``) or an ``operator`` token.
    Raises AuthError: 401 ``auth_failed`` for a bad node header, an unknown node or a
    signature that does not verify; 403 ``node_disabled`` for a disabled node (told only
    once its signature verified)."""
    auth = parse_node_authorization(request.headers.get("authorization", ""))
    if auth is None:
        return (await _role(request, "operator")).actor
    key = await _ctl(request).store.node_key(auth.node_id)
    if key is None:
        raise AuthError(f"node {auth.node_id} is not enrolled with this controller",
                        code="auth_failed")
    public_key, enabled = key
    auth.verify(public_key, request.method, request.url.path,
                now_ms=int(time.time() * 1000))
    if not enabled:
        raise AuthError(f"node {auth.node_id} is disabled", code="node_disabled")
    return f"node:{auth.node_id}"


def _name_version(request: Request) -> tuple[str, int]:
    name, version = request.path_params["name"], request.path_params["version"]
    if NAME_RE.fullmatch(name) is None:
        raise InvalidRequest("a bundle name matches [a-z0-9][a-z0-9-]{0,62}")
    if _VERSION.fullmatch(version) is None or not 1 <= int(version) <= INT64_MAX:
        raise InvalidRequest("a bundle version is an integer from 1")
    return name, int(version)


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for piece in request.stream():
            yield piece
    except ClientDisconnect:
        raise InvalidRequest("the client closed the connection before sending the whole "
                             "bundle") from None


async def publish_bundle(request: Request) -> Response:
    """POST /api/v1/bundles (module docstring)."""
    actor = await _operator(request)
    kind = request.headers.get("content-type", "application/octet-stream").split(";")[0]
    if kind.strip().lower() not in ("application/octet-stream", "application/x-tar"):
        raise InvalidRequest("send the bundle file itself as the body, with 'Content-Type: "
                             "application/octet-stream' (tether bundle publish FILE)")
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isascii() \
        and length.isdigit() else None
    record, created = await _bundles(request).publish(_body(request),
                                                      declared_length=declared, actor=actor)
    return JSONResponse({"name": record.name, "version": record.version,
                         "sha256": record.sha256, "size": record.size},
                        status_code=201 if created else 200)


async def list_bundles(request: Request) -> Response:
    await _role(request)
    name = request.query_params.get("name")
    if name is not None and NAME_RE.fullmatch(name) is None:
        raise InvalidRequest("'name' must match [a-z0-9][a-z0-9-]{0,62}")
    limit = _query_int(request, "limit", 100, lo=1, hi=1000)
    before = _query_int(request, "before", 0, lo=1, hi=INT64_MAX) \
        if "before" in request.query_params else None
    rows = await _bundles(request).store.list_bundles(name=name, before=before, limit=limit)
    return JSONResponse({"items": [bundle_view(r) for r in rows],
                         "next_before": rows[-1].seq if len(rows) == limit else None})


async def get_bundle(request: Request) -> Response:
    await _role(request)
    record = await _bundles(request).store.get_bundle(*_name_version(request))
    return JSONResponse(bundle_view(record, with_manifest=True))


async def download_bundle(request: Request) -> Response:
    """GET /api/v1/bundles/{name}/{version}/file (module docstring)."""
    await _file_caller(request)
    service = _bundles(request)
    record = await service.store.get_bundle(*_name_version(request))
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{record.sha256}"',
               "Content-Disposition":
                   f'attachment; filename="{record.name}-{record.version}.bundle"'}
    try:
        wanted = parse_range(request.headers.get("range"), record.size)
    except RangeNotSatisfiable as exc:
        resp = error_response(exc.http_status, exc.code, exc.message)
        resp.headers["Content-Range"] = f"bytes */{record.size}"
        return resp
    start, end = wanted or (0, record.size - 1)
    headers["Content-Length"] = str(end - start + 1)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{record.size}"
    if request.method == "HEAD":  # the headers alone: no chunk is read
        return Response(status_code=status, headers=headers, media_type="application/x-tar")
    return StreamingResponse(service.read(record, start, end), status_code=status,
                             headers=headers, media_type="application/x-tar")


ROUTES = [
    Route("/api/v1/bundles", publish_bundle, methods=["POST"]),
    Route("/api/v1/bundles", list_bundles, methods=["GET"]),
    Route("/api/v1/bundles/{name}/{version}", get_bundle, methods=["GET"]),
    Route("/api/v1/bundles/{name}/{version}/file", download_bundle, methods=["GET"]),
]

"""HTTP request bodies, read through a limit and parsed strictly: the one way a Tether
endpoint (controller REST, enrollment, the node's loopback ``/publish``) reads a body.

Rule 1: no more than ``max_bytes`` (plus one transport chunk, at most 64 KiB) is ever held
for a body. A declared ``Content-Length`` over the limit is refused before a byte is read;
a chunked body (no ``Content-Length``) is cut off as soon as it passes the limit. Either way
the caller gets :class:`BodyTooLarge` (HTTP 413, ``frame_too_large``). The connection stays
open: what the client still sends is read and dropped by the HTTP layer (bounded by its
body deadline, :mod:`.http_deadlines`), so the client does see the 413.
Rule 2: the JSON is strict: no ``NaN``/``Infinity`` literals, no number that is not finite
(``1e999``), no integer outside the signed 64-bit range, no nesting deeper than the limit,
no text that is not valid Unicode (``"\\ud800"``). Anything else is
:class:`~tether.protocol.errors.InvalidRequest` (HTTP 400, ``invalid_request``), never a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import ClientDisconnect, Request

from tether.protocol.errors import BadFrame, InvalidRequest, TetherError
from tether.protocol.values import INT64_MAX, INT64_MIN, Limits, plain

MAX_JSON_DEPTH = 32
_MAX_INT_DIGITS = 20  # a signed 64-bit integer has at most 19 digits and a sign


class BodyTooLarge(TetherError):
    default_code = "frame_too_large"


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The request body, at most ``max_bytes`` (Rule 1). Raises :class:`BodyTooLarge`, or
    :class:`InvalidRequest` when the client goes away before the body is complete."""
    too_large = BodyTooLarge(f"body is over {max_bytes} bytes; send at most {max_bytes}")
    length = request.headers.get("content-length")
    # the HTTP parser has already checked that a Content-Length is digits
    if length is not None and length.isascii() and length.isdigit() and int(length) > max_bytes:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > max_bytes:
                raise too_large
            body += chunk
    except ClientDisconnect:
        raise InvalidRequest("the client closed the connection before sending its whole "
                             "body") from None
    return bytes(body)


def _bad_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:32]} is too large")
    return value


def _parse_int(literal: str) -> int:
    if len(literal) > _MAX_INT_DIGITS:  # refuse before the conversion does the work
        raise ValueError("an integer is outside the signed 64-bit range")
    value = int(literal)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("an integer is outside the signed 64-bit range")
    return value


def loads_strict(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in ``raw`` under Rule 2 (UTF-8, -16 or -32, as :func:`json.loads`).
    Raises :class:`InvalidRequest` naming what was wrong."""
    try:
        value = json.loads(raw, parse_constant=_bad_constant, parse_float=_parse_float,
                           parse_int=_parse_int)
    except RecursionError:  # the decoder recursed past the interpreter's limit
        raise InvalidRequest(f"body is nested over {max_depth} levels") from None
    except ValueError as exc:  # includes UnicodeDecodeError and JSONDecodeError
        raise InvalidRequest(f"body is not valid JSON: {str(exc)[:200]}") from None
    try:
        # depth, valid text; bytes are already bounded by read_body, so the walk's own
        # byte and entry budgets only need to be out of the way
        return plain(value, "body", Limits(max_depth=max_depth, max_entries=1 << 40,
                                           max_bytes=1 << 40, max_key_len=1 << 40))
    except BadFrame as exc:
        raise InvalidRequest(exc.message.replace("field 'body'", "body")) from None


async def read_json_object(request: Request, *, max_bytes: int,
                           max_depth: int = MAX_JSON_DEPTH,
                           empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON object body under Rules 1 and 2. An empty body is ``empty`` when given (the
    controller treats it as ``{}``), else invalid."""
    raw = await read_body(request, max_bytes=max_bytes)
    if not raw and empty is not None:
        return dict(empty)
    body = loads_strict(raw, max_depth=max_depth)
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return body

"""The REST check the ``fuzz_rest.py`` harness runs: one fuzzed request through the real
controller app in process (``asgi.Controller``), shared by the pytest replay of its corpus.

Contract: every request gets a status below 500; a 4xx carries the one JSON error shape;
after any request, the operator's read endpoints still answer 200 ("reading is total").

Known crashes whose fix belongs to another slice of issue 11 are listed in
:data:`KNOWN_ELSEWHERE`; the check lets them pass so the fuzzer keeps looking for new ones,
and ``test_regressions.py`` pins each with a strict xfail, so the entry must go when the
fix lands. ``TETHER_FUZZ_STRICT=1`` lets none pass.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
from collections.abc import Iterator
from urllib.parse import quote

from .asgi import Controller, assert_error_shape

# (method, path, authenticated): the first input byte picks one
ENDPOINTS = [
    ("POST", "/v1/edge/enroll", False),  # the one body an unauthenticated peer can send
    ("POST", "/v1/edge/enroll", False),  # the same, chunked (no Content-Length)
    ("POST", "/api/v1/join-tokens", True),
    ("POST", f"/api/v1/nodes/{Controller.node_id}/commands", True),
    ("POST", "/api/v1/join-tokens", False),  # a body without a token: 401 before parsing
    ("GET", f"/api/v1/nodes/{Controller.node_id}/logs", True),  # query strings from here
    ("GET", f"/api/v1/nodes/{Controller.node_id}/events", True),
    ("GET", "/api/v1/commands", True),
]
CHUNKED = 1
READS = ("/api/v1/nodes", f"/api/v1/nodes/{Controller.node_id}", "/api/v1/commands")

# (issue item, exception type, text in its message): crashes found here, fixed elsewhere
KNOWN_ELSEWHERE: list[tuple[str, type[BaseException], str]] = []
STRICT = os.environ.get("TETHER_FUZZ_STRICT", "") not in ("", "0")

_ctl: Controller | None = None


def known_elsewhere(exc: BaseException) -> str | None:
    """The issue item a crash belongs to, when it is one of :data:`KNOWN_ELSEWHERE`."""
    if STRICT:
        return None
    for item, kind, text in KNOWN_ELSEWHERE:
        if isinstance(exc, kind) and text in str(exc):
            return item
    return None


def controller() -> Controller:
    """One app per process, built on first use and closed at exit."""
    global _ctl
    if _ctl is None:
        _ctl = Controller().__enter__()
        atexit.register(_close)
    return _ctl


def _close() -> None:
    if _ctl is not None:
        # the interpreter may have stopped the client's thread pool already
        with contextlib.suppress(RuntimeError):
            _ctl.__exit__(None, None, None)


def check_rest(data: bytes) -> None:
    """One request; raises for a 5xx, a bad error shape or a failing read after it,
    unless the crash is :func:`known_elsewhere`."""
    try:
        _check_rest(data)
    except Exception as exc:
        if known_elsewhere(exc) is None:
            raise


def _check_rest(data: bytes) -> None:
    if not data:
        return
    ctl = controller()
    index = data[0] % len(ENDPOINTS)
    method, path, auth = ENDPOINTS[index]
    rest = data[1:].replace(b"@TOKEN@", ctl.join_token.encode())
    if method == "GET":
        query = quote(rest.decode("latin-1"), safe="=&")
        resp = ctl.rest("GET", f"{path}?{query}", auth=auth)
    elif index == CHUNKED:
        def chunks() -> Iterator[bytes]:
            yield from (rest[i:i + 64] for i in range(0, len(rest), 64))
        resp = ctl.client.request(method, path, content=chunks(),
                                  headers={"content-type": "application/json"})
    else:
        resp = ctl.rest(method, path, rest, auth=auth)
    assert_error_shape(resp)
    if resp.status_code < 300 and method == "POST":
        for read in READS:
            got = ctl.rest("GET", read)
            assert got.status_code == 200, (read, got.status_code, got.text[:300])
            json.loads(got.text)

"""uvicorn's h11 HTTP protocol with a deadline for reading each request's header and one for
reading its body: what uvicorn does not have (``timeout_keep_alive`` only covers the idle
time between requests), so a peer that sends half a header and stalls would hold its socket
and file descriptor forever.

Rule 1: from the moment a connection is accepted, or the first byte of a later request on it
arrives, the whole request header must arrive within ``header_timeout_s``; once it has, the
whole body must arrive within ``body_timeout_s``. Past either, the connection gets a 408
with the JSON error body (when no response has started) and is closed.
Rule 2: a WebSocket upgrade leaves this protocol once its header is read; from then on the
WebSocket endpoint owns the connection's deadlines (the edge's hello deadline).
Rule 3: an unparseable request gets a 400 with the JSON error body (uvicorn sends text).
Rule 4: at most ``max_pending_headers`` connections of one server wait for a header at a
time; past it, the one that has waited longest is answered 408 and closed (drop the oldest:
a client that sends its request at once is served before many more arrive behind it), if it
has waited ``MIN_WAIT_S``: a burst of honest clients is not turned against itself, so the cap
is soft by what arrives within that second. The wait is measured on this server's loop,
which lags in a burst (every accepted connection waits for its first read), so the cap must
sit well above the largest honest burst: at 4,096, 5,000 nodes dialling at once from one
process lost 904 handshakes to it; at 16,384, none.

Rule 5: a deadline blames the client only for bytes it has not sent. The loop runs timers
before it reads sockets, so on a loop that lags (a burst, a saturated controller) a deadline
or uvicorn's keep-alive timer can fire while the request sits unread in the socket: when
the socket holds unread bytes, the connection gets ``GRACE_S`` more (at most
``MAX_GRACES`` times per phase) instead of a 408 or a close the client did nothing to earn.

The header itself is bounded by h11 (16 KiB by default, then 400). Use
:func:`deadline_protocol` to make the class passed to ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_PENDING_HEADERS = 16384
MIN_WAIT_S = 1.0
GRACE_S = 1.0  # Rule 5
MAX_GRACES = 30


def has_unread_bytes(transport: asyncio.BaseTransport) -> bool:
    """True when the transport's socket holds bytes this process has not read yet (peeked,
    not consumed). False when it cannot tell."""
    sock = transport.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return False
    peek = socket.socket(fileno=fd)
    try:
        return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing unread; anything else: cannot tell
        return False
    finally:
        peek.detach()  # the fd stays the transport's


def _json_error(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class DeadlineH11Protocol(H11Protocol):
    """See the module docstring. Class attributes are the deadlines, in seconds."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_pending_headers: int = MAX_PENDING_HEADERS
    # Rule 4: this server's connections waiting for a header, oldest first (one dict per
    # class that deadline_protocol() makes, so per server)
    _awaiting_header: ClassVar[dict[DeadlineH11Protocol, float]] = {}  # -> since (loop time)
    # this server's counters (per class, like _awaiting_header): 408s for a late header or
    # body, and connections pushed out by Rule 4 (counted in the header ones too)
    header_timeouts_total: ClassVar[int] = 0
    body_timeouts_total: ClassVar[int] = 0
    pending_headers_evicted_total: ClassVar[int] = 0

    _phase: str | None = None  # "header", "body" or None: what the deadline is for
    _graces = 0  # Rule 5, per phase
    _deadline: asyncio.TimerHandle | None = None
    _upgraded = False  # the transport belongs to a WebSocket protocol now (Rule 2)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_phase("header")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._upgraded and not self.transport.is_closing():
            self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start on a pipelined request already received
        if not self.transport.is_closing():
            self._follow_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_phase(None)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # Rule 2: h11 still thinks the request is in its body; no deadline may outlive
        # the hand-over and close the WebSocket's transport
        self._upgraded = True
        self._set_phase(None)
        super().handle_websocket_upgrade(event)

    def send_400_response(self, msg: str) -> None:
        """Rule 3: uvicorn's 400 for a request h11 cannot parse, with the JSON body."""
        self._set_phase(None)
        if not self.transport.is_closing():
            self.transport.write(_json_error(400, "Bad Request", "invalid_request",
                                             "invalid HTTP request"))
            self.transport.close()

    def _follow_request(self) -> None:
        """Which deadline applies, from where h11 is in the client's request (Rule 1)."""
        state = self.conn.their_state
        if state is h11.IDLE:
            # bytes of a header have arrived, not all of it; with none, the connection is
            # idle between requests and uvicorn's keep-alive timeout owns it
            self._set_phase("header" if self.conn.trailing_data[0] else None)
        elif state is h11.SEND_BODY:
            self._set_phase("body")
        else:  # the request is complete (or the connection is done): the app owns it
            self._set_phase(None)

    def _set_phase(self, phase: str | None) -> None:
        if self._upgraded:
            phase = None
        if phase == self._phase:
            return  # each deadline runs from the start of its phase, not from each read
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._phase == "header":
            self._awaiting_header.pop(self, None)
        self._phase = phase
        if phase == "header":
            waiting, now = self._awaiting_header, self.loop.time()
            while len(waiting) >= self.max_pending_headers:
                oldest, since = next(iter(waiting.items()))
                if now - since < MIN_WAIT_S:
                    break
                waiting.pop(oldest)
                type(self).pending_headers_evicted_total += 1
                oldest._expired()
            waiting[self] = now
        self._graces = 0
        if phase is not None:
            timeout_s = self.header_timeout_s if phase == "header" else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout_s, self._late)

    def _late(self) -> None:
        """The deadline fired: the client is late unless the loop is (Rule 5)."""
        if self._graces < MAX_GRACES and has_unread_bytes(self.transport):
            self._graces += 1
            self._deadline = self.loop.call_later(GRACE_S, self._late)
            return
        self._expired()

    def timeout_keep_alive_handler(self) -> None:
        """uvicorn's idle keep-alive timer, with Rule 5: a request already waiting in the
        socket is read, not answered with a close."""
        if not self.transport.is_closing() and has_unread_bytes(self.transport):
            self.timeout_keep_alive_task = self.loop.call_later(
                GRACE_S, self.timeout_keep_alive_handler)
            return
        super().timeout_keep_alive_handler()

    def _expired(self) -> None:
        phase = self._phase
        if self._deadline is not None:  # when Rule 4 ends the wait before its time
            self._deadline.cancel()
            self._deadline = None
        self._awaiting_header.pop(self, None)
        self._phase = None
        if self._upgraded or self.transport.is_closing():
            return
        if phase == "header":
            type(self).header_timeouts_total += 1
        else:
            type(self).body_timeouts_total += 1
        # a header that is late belongs to a request nobody has answered yet
        if phase == "header" or self.cycle is None or not self.cycle.response_started:
            timeout_s = self.header_timeout_s if phase == "header" else self.body_timeout_s
            self.transport.write(_json_error(
                408, "Request Timeout", "request_timeout",
                f"the request {phase} did not arrive within {timeout_s:g} s"))
        if self.cycle is not None:
            self.cycle.keep_alive = False
        self.transport.close()


def deadline_protocol(*, header_timeout_s: float = HEADER_TIMEOUT_S,
                      body_timeout_s: float = BODY_TIMEOUT_S,
                      max_pending_headers: int = MAX_PENDING_HEADERS
                      ) -> type[DeadlineH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these deadlines and cap
    (one class per server: Rule 4 counts per class)."""
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
                 "max_pending_headers": max(1, max_pending_headers),
                 "_awaiting_header": {}, "header_timeouts_total": 0,
                 "body_timeouts_total": 0, "pending_headers_evicted_total": 0})

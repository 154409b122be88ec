"""One exception tree for Tether, and the one table that maps error codes to close codes,
HTTP statuses and the peer's reaction (docs/protocol.md §7 shows it).

Every error carries a snake_case ``code``; the code alone decides how it travels (WebSocket
close code, HTTP status). Messages are lowercase, name the values involved and say what to
do; they never include internal state of the process that raised them.

Rule 1: the reaction (and readiness incident) belongs to the close code, in
:data:`CLOSE_TABLE`, because a peer sees only the close code.
Rule 2: every :class:`CloseCode` has at least one error code in :data:`ERROR_TABLE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum


class CloseCode(IntEnum):
    """Every WebSocket close code Tether sends or records (PROTOCOL.md §7). Name them: a bare
    literal escapes the table below (``tests/protocol/test_errors_table.py`` scans for one)."""

    NORMAL_CLOSURE = 1000  # after goodbye, or closed before hello
    GOING_AWAY = 1001  # the controller is stopping
    CONNECTION_LOST = 1006  # never sent (RFC 6455 §7.4.1): recorded when no close frame came
    FRAME_TOO_LARGE = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    PROTOCOL_ERROR = 4400
    AUTH_FAILED = 4401
    FORBIDDEN = 4403  # node disabled (edge); origin not allowed (/ws)
    TIMEOUT = 4408  # handshake or heartbeat
    SUPERSEDED = 4409
    UNSUPPORTED_PROTOCOL = 4426
    RATE_LIMITED = 4429  # rate limited or overloaded; the reason carries retry_after=<s>
    PIN_MISMATCH = 4995  # never sent: the sidecar's own, for a controller certificate not pinned


class Reaction(Enum):
    """What a peer does after a close code: what the sidecar's ``ControllerLink.run`` does."""

    BACKOFF = "back off"  # redial after the next full-jitter delay (0.5 s base, 30 s cap)
    BACKOFF_MAX = "back off to the maximum"  # do not hammer: 15-30 s, whatever the attempt
    RETRY_AFTER = "retry after"  # the reason's retry_after=<s>, plus up to 50% jitter
    STOP = "stop"  # never redial from this process; report


class Incident(Enum):
    """Which kind of trouble a close code is, for the node's readiness incidents."""

    AUTH = "auth"
    PROTOCOL = "protocol"
    TRANSPORT = "transport"


@dataclass(frozen=True, slots=True)
class CloseSpec:
    """What one close code means to the peer that receives it.

    ``meaning`` is also the reason reported when a final close arrived without one."""

    meaning: str
    reaction: Reaction
    incident: Incident


_R, _I = Reaction, Incident

# Rule 1: a peer sees only the close code, so the reaction belongs to the close code: every
# error code with the same close code gets the same reaction (ErrorSpec.reaction reads it here).
CLOSE_TABLE: dict[CloseCode, CloseSpec] = {
    CloseCode.NORMAL_CLOSURE: CloseSpec("normal", _R.BACKOFF, _I.TRANSPORT),
    CloseCode.GOING_AWAY: CloseSpec("controller going away", _R.BACKOFF, _I.TRANSPORT),
    CloseCode.CONNECTION_LOST: CloseSpec("connection lost", _R.BACKOFF, _I.TRANSPORT),
    CloseCode.FRAME_TOO_LARGE: CloseSpec("frame too big", _R.BACKOFF, _I.PROTOCOL),
    CloseCode.INTERNAL_ERROR: CloseSpec("internal error", _R.BACKOFF, _I.TRANSPORT),
    CloseCode.TRY_AGAIN_LATER: CloseSpec("try again later", _R.BACKOFF, _I.TRANSPORT),
    CloseCode.PROTOCOL_ERROR: CloseSpec("protocol error", _R.BACKOFF, _I.PROTOCOL),
    CloseCode.AUTH_FAILED: CloseSpec("authentication failed", _R.BACKOFF_MAX, _I.AUTH),
    CloseCode.FORBIDDEN: CloseSpec("node disabled", _R.STOP, _I.AUTH),
    CloseCode.TIMEOUT: CloseSpec("handshake or heartbeat timeout", _R.BACKOFF, _I.TRANSPORT),
    CloseCode.SUPERSEDED: CloseSpec("superseded by a newer session", _R.STOP, _I.TRANSPORT),
    CloseCode.UNSUPPORTED_PROTOCOL: CloseSpec("unsupported protocol version", _R.STOP,
                                              _I.PROTOCOL),
    CloseCode.RATE_LIMITED: CloseSpec("rate limited / overloaded", _R.RETRY_AFTER,
                                      _I.TRANSPORT),
    CloseCode.PIN_MISMATCH: CloseSpec("certificate pin mismatch", _R.BACKOFF_MAX, _I.TRANSPORT),
}

# What a close code nobody tabled gets (1012 from a server restarting, a proxy's 1002, or
# None when the dial itself failed): the ordinary backoff, counted as transport trouble.
UNKNOWN_CLOSE = CloseSpec("unknown close code", Reaction.BACKOFF, Incident.TRANSPORT)


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """How one error code travels: the WebSocket close code and the HTTP status; and what
    the peer does about it (read from :data:`CLOSE_TABLE`, see Rule 1)."""

    close_code: CloseCode
    http_status: int

    @property
    def reaction(self) -> Reaction:
        return CLOSE_TABLE[self.close_code].reaction

    @property
    def incident(self) -> Incident:
        return CLOSE_TABLE[self.close_code].incident


_C = CloseCode

# The single table (PROTOCOL.md §7 for close codes, §8 for HTTP statuses). Codes not listed
# fall back to ``internal`` (1011 / 500). Rule 2: every CloseCode has at least one entry.
ERROR_TABLE: dict[str, ErrorSpec] = {
    "bad_frame": ErrorSpec(_C.PROTOCOL_ERROR, 400),
    "protocol_error": ErrorSpec(_C.PROTOCOL_ERROR, 400),
    "unknown_type": ErrorSpec(_C.PROTOCOL_ERROR, 400),
    "unsupported_type": ErrorSpec(_C.PROTOCOL_ERROR, 400),
    "stream_regressed": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "frame_too_large": ErrorSpec(_C.FRAME_TOO_LARGE, 413),
    "auth_failed": ErrorSpec(_C.AUTH_FAILED, 401),
    "unauthorized": ErrorSpec(_C.AUTH_FAILED, 401),
    "node_disabled": ErrorSpec(_C.FORBIDDEN, 403),
    "forbidden": ErrorSpec(_C.FORBIDDEN, 403),
    "handshake_timeout": ErrorSpec(_C.TIMEOUT, 408),
    "heartbeat_timeout": ErrorSpec(_C.TIMEOUT, 408),
    "request_timeout": ErrorSpec(_C.TIMEOUT, 408),
    "poison_frame": ErrorSpec(_C.PROTOCOL_ERROR, 400),
    "quota_exceeded": ErrorSpec(_C.PROTOCOL_ERROR, 413),
    "superseded": ErrorSpec(_C.SUPERSEDED, 409),
    "unsupported_protocol": ErrorSpec(_C.UNSUPPORTED_PROTOCOL, 400),
    "rate_limited": ErrorSpec(_C.RATE_LIMITED, 429),
    "invalid_request": ErrorSpec(_C.PROTOCOL_ERROR, 400),
    "invalid_token": ErrorSpec(_C.AUTH_FAILED, 401),
    "not_found": ErrorSpec(_C.PROTOCOL_ERROR, 404),
    "method_not_allowed": ErrorSpec(_C.PROTOCOL_ERROR, 405),
    "conflict": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "node_id_taken": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "command_terminal": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "command_not_running": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "command_not_paused": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "node_offline": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "job_done": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "rollout_running": ErrorSpec(_C.PROTOCOL_ERROR, 409),  # one rollout of a bundle at a time
    "rollout_state": ErrorSpec(_C.PROTOCOL_ERROR, 409),  # a pause/resume/abort its state refuses
    "range_not_satisfiable": ErrorSpec(_C.PROTOCOL_ERROR, 416),  # a bundle download's Range
    # rtc.*: a stale or superseded negotiation_id, or an unknown peer_session_id; the
    # message is never applied (an error frame; the session and the peer stay)
    "rtc_stale": ErrorSpec(_C.PROTOCOL_ERROR, 409),
    "rtc_unknown_peer": ErrorSpec(_C.PROTOCOL_ERROR, 404),  # cancel of a job that already ended
    "store_corrupt": ErrorSpec(_C.INTERNAL_ERROR, 500),
    "store_locked": ErrorSpec(_C.INTERNAL_ERROR, 500),
    "unavailable": ErrorSpec(_C.TRY_AGAIN_LATER, 503),
    "internal": ErrorSpec(_C.INTERNAL_ERROR, 500),
    # Closes that are not failures still need a row (Rule 2); the HTTP status is what REST
    # would answer for the same situation.
    "normal_closure": ErrorSpec(_C.NORMAL_CLOSURE, 410),  # the session is gone
    "going_away": ErrorSpec(_C.GOING_AWAY, 503),
    "connection_lost": ErrorSpec(_C.CONNECTION_LOST, 502),
    "pin_mismatch": ErrorSpec(_C.PIN_MISMATCH, 502),  # an upstream we must not trust
}


class TetherError(Exception):
    """Root of every error Tether raises on purpose.

    ``code`` is a key of :data:`ERROR_TABLE`; ``message`` is safe to show to the peer.
    """

    default_code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    @property
    def spec(self) -> ErrorSpec:
        return ERROR_TABLE.get(self.code, ERROR_TABLE["internal"])

    @property
    def close_code(self) -> int:
        return self.spec.close_code

    @property
    def http_status(self) -> int:
        return self.spec.http_status


class ProtocolError(TetherError):
    """A violation of the wire contract."""

    default_code = "protocol_error"


class LocalProtocolError(ProtocolError):
    """We were about to break the contract (a bug on this side): never sent to the wire."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the contract; ``close_code`` says how to end the connection."""


class FrameTooLarge(RemoteProtocolError):
    default_code = "frame_too_large"


class BadFrame(RemoteProtocolError):
    default_code = "bad_frame"


class AuthError(TetherError):
    default_code = "auth_failed"


class NotFound(TetherError):
    default_code = "not_found"


class Conflict(TetherError):
    default_code = "conflict"


class InvalidRequest(TetherError):
    default_code = "invalid_request"


class StoreError(TetherError):
    default_code = "store_corrupt"


def close_code_for(code: str) -> CloseCode:
    """The WebSocket close code for an error code (1011 for unknown codes)."""
    return ERROR_TABLE.get(code, ERROR_TABLE["internal"]).close_code


def http_status_for(code: str) -> int:
    """The HTTP status for an error code (500 for unknown codes)."""
    return ERROR_TABLE.get(code, ERROR_TABLE["internal"]).http_status


def close_spec(close_code: int | None) -> CloseSpec:
    """What a received close code means (:data:`UNKNOWN_CLOSE` for one not tabled, or None
    when there was no close at all): the peer sees only the close code, never the error code."""
    if close_code is None:
        return UNKNOWN_CLOSE
    try:
        return CLOSE_TABLE[CloseCode(close_code)]
    except ValueError:
        return UNKNOWN_CLOSE


def reaction_for_close(close_code: int | None) -> Reaction:
    """The peer's reaction to a close code (``BACKOFF`` for one not tabled)."""
    return close_spec(close_code).reaction


def incident_for_close(close_code: int | None) -> Incident:
    """The kind of trouble a close code is (``TRANSPORT`` for one not tabled)."""
    return close_spec(close_code).incident


def error_table_markdown() -> str:
    """:data:`CLOSE_TABLE` and :data:`ERROR_TABLE` as the two Markdown tables of
    docs/protocol.md §7 (a test keeps the doc equal to this): close codes in order, then error
    codes ordered by close code, then name."""
    rows = ["| close code | name | meaning | peer's reaction | readiness incident |",
            "|---|---|---|---|---|"]
    for close, c in sorted(CLOSE_TABLE.items()):
        rows.append(f"| {int(close)} | `{close.name}` | {c.meaning} | {c.reaction.value} "
                    f"| {c.incident.value} |")
    rows += ["", "| error code | close code | HTTP status | peer's reaction |", "|---|---|---|---|"]
    for code, spec in sorted(ERROR_TABLE.items(), key=lambda kv: (kv[1].close_code, kv[0])):
        rows.append(f"| `{code}` | {int(spec.close_code)} | {spec.http_status} "
                    f"| {spec.reaction.value} |")
    return "\n".join(rows)


MAX_CLOSE_REASON_BYTES = 123  # RFC 6455 §5.5: a control frame's payload is 125 bytes


def close_reason(text: str) -> str:
    """``text`` cut to what a WebSocket close frame carries: at most 123 UTF-8 bytes, never
    in the middle of a character (a longer reason makes the close itself fail)."""
    return text.encode("utf-8", "replace")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")

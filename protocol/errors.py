"""One exception tree for Tether, and the one table that maps error codes to close codes and
HTTP statuses.

Rule: every error carries a snake_case ``code``; the code alone decides how it travels
(WebSocket close code, HTTP status). Messages are lowercase, name the values involved and say
what to do; they never include internal state of the process that raised them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """How one error code travels: the WebSocket close code and the HTTP status."""

    close_code: int
    http_status: int


# The single table (PROTOCOL.md §7 for close codes). Codes not listed fall back to
# ``internal`` (1011 / 500).
ERROR_TABLE: dict[str, ErrorSpec] = {
    "bad_frame": ErrorSpec(4400, 400),
    "protocol_error": ErrorSpec(4400, 400),
    "unknown_type": ErrorSpec(4400, 400),
    "unsupported_type": ErrorSpec(4400, 400),
    "stream_regressed": ErrorSpec(4400, 409),
    "frame_too_large": ErrorSpec(1009, 413),
    "auth_failed": ErrorSpec(4401, 401),
    "unauthorized": ErrorSpec(4401, 401),
    "node_disabled": ErrorSpec(4403, 403),
    "forbidden": ErrorSpec(4403, 403),
    "handshake_timeout": ErrorSpec(4408, 408),
    "heartbeat_timeout": ErrorSpec(4408, 408),
    "request_timeout": ErrorSpec(4408, 408),
    "poison_frame": ErrorSpec(4400, 400),
    "quota_exceeded": ErrorSpec(4400, 413),
    "superseded": ErrorSpec(4409, 409),
    "unsupported_protocol": ErrorSpec(4426, 400),
    "rate_limited": ErrorSpec(4429, 429),
    "invalid_request": ErrorSpec(4400, 400),
    "invalid_token": ErrorSpec(4401, 401),
    "not_found": ErrorSpec(4400, 404),
    "conflict": ErrorSpec(4400, 409),
    "node_id_taken": ErrorSpec(4400, 409),
    "command_terminal": ErrorSpec(4400, 409),
    "command_not_running": ErrorSpec(4400, 409),
    "command_not_paused": ErrorSpec(4400, 409),
    "node_offline": ErrorSpec(4400, 409),
    "store_corrupt": ErrorSpec(1011, 500),
    "store_locked": ErrorSpec(1011, 500),
    "unavailable": ErrorSpec(1013, 503),
    "internal": ErrorSpec(1011, 500),
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


def close_code_for(code: str) -> int:
    """The WebSocket close code for an error code (1011 for unknown codes)."""
    return ERROR_TABLE.get(code, ERROR_TABLE["internal"]).close_code


def http_status_for(code: str) -> int:
    """The HTTP status for an error code (500 for unknown codes)."""
    return ERROR_TABLE.get(code, ERROR_TABLE["internal"]).http_status


MAX_CLOSE_REASON_BYTES = 123  # RFC 6455 §5.5: a control frame's payload is 125 bytes


def close_reason(text: str) -> str:
    """``text`` cut to what a WebSocket close frame carries: at most 123 UTF-8 bytes, never
    in the middle of a character (a longer reason makes the close itself fail)."""
    return text.encode("utf-8", "replace")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")

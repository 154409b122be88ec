"""A node's ``error`` about an ``rtc.*`` frame, as the controller relays it back to the
``/ws`` client that sent the frame (docs/protocol.md "Media plane signalling", "Errors
back to the client"), with no I/O.

A node refuses a bad ``rtc.*`` frame (``rtc_stale``, ``rtc_unknown_peer``, ``bad_frame``,
``unavailable``, ``rate_limited``) with an ``error`` frame whose ``re`` is the id of the
frame it refuses and whose body carries ``to`` (the ``from`` it was given) and the peer's
ids. The controller hands the client's frame id on to the node unchanged, so that ``re``
is the client's own frame id when the error comes back.

Rule (bounded): ``code`` at most :data:`MAX_CODE` characters of ``[a-z0-9_.]``,
``message`` at most :data:`MAX_MESSAGE` bytes of UTF-8; the ids as ``protocol/rtc.py``
checks them. Unknown fields are dropped: a node cannot make the controller copy anything
else to a client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import BadFrame
from .frames import Body
from .rtc import _address, _ident, _negotiation_id, _node_id, _text

MAX_CODE = 64
MAX_MESSAGE = 500
_CODE = re.compile(r"[a-z0-9_.]{1,64}")


@dataclass(frozen=True, slots=True)
class RtcError(Body):
    """An ``error`` frame about one peer's ``rtc.*`` frame. ``to`` is the address the node
    answers (``client:<id>`` or ``node:<id>``); ``from_`` is stamped by the controller on
    what it hands on. ``negotiation_id`` may be absent (an error about no round)."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    node_id: str
    peer_session_id: str
    negotiation_id: str | int | None = None
    to: str | None = None
    from_: str | None = None

    def to_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message,
                               "node_id": self.node_id,
                               "peer_session_id": self.peer_session_id}
        if self.negotiation_id is not None:
            out["negotiation_id"] = self.negotiation_id
        if self.to is not None:
            out["to"] = self.to
        if self.from_ is not None:
            out["from"] = self.from_
        return out

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RtcError:
        if not isinstance(b, Mapping):
            raise BadFrame("the body must be a map")
        code = b.get("code")
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise BadFrame(f"field 'code' must be 1-{MAX_CODE} characters of [a-z0-9_.]")
        message = _text(b, "message", MAX_MESSAGE, required=False) or ""
        return cls(code=code, message=message, node_id=_node_id(b),
                   peer_session_id=_ident(b, "peer_session_id"),
                   negotiation_id=(None if b.get("negotiation_id") is None
                                   else _negotiation_id(b)),
                   to=_address(b, "to"), from_=_address(b, "from"))

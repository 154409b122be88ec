"""The rules of commands and of the cmd stream, as pure code (no I/O, no clock, no random):
the store asks these functions what to do and only stores the answer.

Command states (PROTOCOL.md §6)::

    queued -> delivered -> running <-> paused
       |          |           |          |
       +----------+-----------+----------+--> succeeded | failed | cancelled
                                               | expired | rejected   (terminal)

Rule 1 (status): a ``cmd.status`` moves a command to the reported state unless the command
is terminal or already in that state (then it is ignored, and the timeline says so). A
status for a command still ``queued`` implies it was ``delivered`` first (its ack was
lost or is behind): the timeline records both.
Rule 2 (control): ``cancel`` is allowed from any non-terminal state, ``pause`` only from
``running``, ``resume`` only from ``paused``; anything else is a Conflict with the code the
API documents. A ``cancel`` of a command not yet sequenced onto the stream is done by the
controller alone (``cancelled``, nothing sent); every other allowed action follows the
command to the node as a control command.
Rule 3 (delivery): a queued command whose deadline has passed is ``expired`` and never
sent; one whose ``cmd.deliver`` frame cannot be built within the node's frame cap is
``rejected`` with the reason and takes no sequence number. The frame is built by
:func:`tether.protocol.deliver.encode_deliver` from what the command carries: id, kind,
args, created and deadline times in ms.
Rule 4 (ack): the node's ack ``n`` on the cmd stream delivers every still-``queued``
command sequenced in ``(applied, n]`` of the current epoch; an ack at or below ``applied``
changes nothing.
Rule 5 (epoch): at hello the cmd stream keeps its epoch when the node's ack fits
``applied <= acked <= sent`` (``sent`` clamped to ``[applied, last]``: a node cannot have
applied what was never written to it) and the evt stream did not reset; otherwise a new
epoch starts and the unacked frames are re-sequenced from 1 in their order
(:func:`resequence`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack

from tether.protocol.deliver import command_args, command_kind, encode_deliver
from tether.protocol.errors import BadFrame, Conflict, TetherError
from tether.protocol.frames import (
    COMMAND_STATES,
    CONTROL_KINDS,
    STATUS_STATES,
    TERMINAL_STATES,
)

__all__ = [
    "COMMAND_STATES",
    "CONTROL_KINDS",
    "STATUS_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "ControlAction",
    "Delivery",
    "StatusDecision",
    "cmd_epoch_fits",
    "control_action",
    "delivery",
    "on_status",
    "resequence",
]

# Rule 1 as a table: the states a command may move to from each state. Terminal states
# lead nowhere; "delivered" is reached by an ack (Rule 4) or implied by a status.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "queued": frozenset({"delivered", "running", "paused", *TERMINAL_STATES}),
    "delivered": frozenset({"running", "paused", *TERMINAL_STATES}),
    "running": frozenset({"paused", *TERMINAL_STATES}),
    "paused": frozenset({"running", *TERMINAL_STATES}),
    **{state: frozenset() for state in TERMINAL_STATES},
}


@dataclass(frozen=True, slots=True)
class StatusDecision:
    """What a ``cmd.status`` does to a command (Rule 1).

    ``apply``: move the command to the reported state. ``implied_delivered``: record
    ``delivered`` first. ``state``: the command's state afterwards. ``detail``: the
    timeline's note for an ignored status."""

    apply: bool
    implied_delivered: bool
    state: str
    detail: str | None = None


def on_status(current: str, reported: str) -> StatusDecision:
    """Rule 1: what a status reporting ``reported`` does to a command in ``current``."""
    if reported not in TRANSITIONS.get(current, frozenset()):
        return StatusDecision(apply=False, implied_delivered=False, state=current,
                              detail=f"ignored: command already {current}")
    return StatusDecision(apply=True, implied_delivered=current == "queued", state=reported)


class ControlAction(Enum):
    """How an allowed control action is carried out (Rule 2)."""

    CANCEL_HERE = "cancel_here"  # not yet sequenced: cancelled by the controller alone
    SEND = "send"  # a control command follows the target on the node's stream


def control_action(command_id: str, action: str, state: str, *,
                   sequenced: bool) -> ControlAction:
    """Rule 2. Raises ValueError for an unknown ``action`` and Conflict
    (``command_terminal`` / ``command_not_running`` / ``command_not_paused``) for one the
    state does not allow."""
    if action not in CONTROL_KINDS:
        raise ValueError(f"unknown control action {action!r}")
    if state in TERMINAL_STATES:
        raise Conflict(f"command {command_id} is already {state}", code="command_terminal")
    if action == "pause" and state != "running":
        raise Conflict(f"command {command_id} is {state}; only a running command can be "
                       "paused", code="command_not_running")
    if action == "resume" and state != "paused":
        raise Conflict(f"command {command_id} is {state}; only a paused command can be "
                       "resumed", code="command_not_paused")
    if action == "cancel" and state == "queued" and not sequenced:
        return ControlAction.CANCEL_HERE
    return ControlAction.SEND


@dataclass(frozen=True, slots=True)
class Delivery:
    """Rule 3's answer for one queued command: ``frame`` (the ``cmd.deliver`` bytes at the
    given sequence number) or the terminal ``state`` it takes instead, with ``error``."""

    frame: bytes | None
    state: str | None = None
    error: str | None = None
    detail: str | None = None  # the timeline's note


def delivery(*, command_id: str, kind: object, args_json: object, created_at: float,
             deadline: float | None, now: float, q: int, max_frame: int) -> Delivery:
    """Rule 3: the frame that carries a queued command at sequence ``q``, or why it is not
    sent. ``args_json`` is the stored JSON text of its args (rows written by older versions
    included: kind and args are checked again here, and text that is not JSON, or not
    plain values, rejects the command)."""
    if deadline is not None and deadline <= now:
        return Delivery(None, "expired", "deadline passed before delivery", "deadline passed")
    try:
        checked_kind = command_kind(kind)
        frame = encode_deliver(
            command_id=command_id, kind=checked_kind,
            args=command_args(checked_kind, _stored_args(args_json)),
            created_ms=int(created_at * 1000),
            deadline_ms=None if deadline is None else int(deadline * 1000),
            q=q, max_frame=max_frame)
    except TetherError as exc:  # BadFrame or CommandTooLarge
        error = f"not delivered: {exc.message}"
        return Delivery(None, "rejected", error, error)
    return Delivery(frame)


def _stored_args(text: object) -> Any:
    """Stored args JSON as written by any version (NaN included, which ``command_args``
    then refuses); BadFrame when it is not JSON text."""
    if isinstance(text, bytes | memoryview):
        text = bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str):
        raise BadFrame("stored args are not valid JSON")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadFrame("stored args are not valid JSON") from None


def cmd_epoch_fits(*, applied: int, acked: int, sent: int, last: int,
                   evt_reset: bool) -> bool:
    """Rule 5: True when the cmd stream keeps its epoch at a hello carrying ``acked``."""
    sent = min(max(sent, applied), last)
    return not evt_reset and applied <= acked <= sent


def resequence(frames: Sequence[bytes]) -> list[bytes]:
    """Rule 5: unacked ``cmd.deliver`` frames (in their order) renumbered ``1..n`` for a
    new epoch; nothing else in a frame changes."""
    out = []
    for q, data in enumerate(frames, start=1):
        wire = msgpack.unpackb(data, raw=False)
        wire["q"] = q
        out.append(msgpack.packb(wire, use_bin_type=True))
    return out

"""The history checker: does what a soak observed keep PROTOCOL.md §3's promises? (issue 16)

Pure: a list of records in (:mod:`tools.soak.history`) order in, a list of
:class:`Violation` out; no clock, no disk. The promises, and the violation kinds that say
one was broken:

1. **An acked class A frame is never lost** — ``lost_acked``: a frame covered by a
   cumulative ack whose effect is absent (no ``applied``, or an ``effect`` audit of 0).
2. **Exactly-once effect** — ``duplicate_apply``: a frame applied twice (by id, across
   epochs and sessions; or by sequence within one epoch); ``duplicate_effect``: an audit
   found its effect more than once. A duplicate *delivery* is fine: it is acked again and
   recorded as ``duplicate``, never ``applied``.
3. **In order per stream** — ``out_of_order``: within an epoch an apply that is not
   cursor + 1 (it skipped over a gap); across epochs, a frame applied before one appended
   earlier in the same stream. ``stale_epoch_apply``: an apply in an epoch older than the
   stream's current one (the receiver reset its cursor for the new epoch). ``misapplied``:
   the frame the receiver names is not the frame the sender appended at that (epoch, q).
4. **No gap left unrepaired** — ``unrepaired_gap``: a ``gap`` after which the stream's next
   sequence (or a new epoch) never came; ``undelivered``: a frame appended before
   ``drained`` and never applied (unless its sender's store was lost and it was unacked);
   one appended after it (a node still running until the end) is not the drain's promise.
5. **Fencing** — ``apply_from_fenced``: an ``evt`` apply (the controller's) arriving on a
   session that was fenced (superseded by a later claim, or closed);
   ``apply_without_ownership``: an ``evt`` apply by a replica that did not own the node at
   that moment.
6. **Commands** — ``command_not_terminal`` (last state seen not terminal),
   ``terminal_state_changed``, ``state_regressed``, ``executed_twice`` (more than one marker),
   ``succeeded_without_effect`` (succeeded, no marker), ``effect_without_execution``
   (``expired``/``rejected`` never reach a runner, yet a marker exists), ``unknown_command``.
7. **The history itself** — ``ack_unknown_frame``: an ack covering a sequence the sender
   never appended (the controller must refuse that, docs/protocol.md §3);
   ``unknown_frame``: an apply whose frame no ``append`` names.

A ``recovered`` cursor stands in for the ``applied`` records of frames a killed process
committed and never recorded (applied there, once, unfenced: the claim or the store's open
that read it had fenced every older writer); a later ``applied`` of such a frame is its
writer's late record and confirms it. A ``pending`` frame names a slot no ``append`` named.

Ownership is checked only for nodes with at least one ``claimed`` record (a single
controller's history need not record claims); fencing by ``fenced`` records always.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from tether.protocol.frames import TERMINAL_STATES

from .history import (
    Acked,
    Append,
    Applied,
    Claimed,
    CmdState,
    CmdSubmit,
    Drained,
    Duplicate,
    Effect,
    EpochStart,
    Fenced,
    Gap,
    Marker,
    OwnershipLost,
    Pending,
    Record,
    Recovered,
)

VIOLATION_KINDS = (
    "lost_acked", "duplicate_apply", "duplicate_effect", "out_of_order", "stale_epoch_apply",
    "misapplied", "unrepaired_gap", "undelivered", "apply_from_fenced",
    "apply_without_ownership", "command_not_terminal", "terminal_state_changed",
    "state_regressed", "executed_twice", "succeeded_without_effect",
    "effect_without_execution", "unknown_command", "ack_unknown_frame", "unknown_frame",
)
# How far along a command is; a poller must never see it go back.
_STATE_RANK = {"queued": 0, "delivered": 1, "running": 2, "paused": 2,
               **{state: 3 for state in TERMINAL_STATES}}
_NEVER_RUN = frozenset({"expired", "rejected"})


@dataclass(frozen=True)
class Violation:
    """One broken promise, machine-readable. ``seq`` is the stream sequence where one
    applies; ``detail`` names the ids involved in words."""

    kind: str
    node: str | None = None
    stream: str | None = None
    seq: int | None = None
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


StreamKey = tuple[str, str]              # (node, stream)
FrameKey = tuple[str, str, str]          # (node, stream, frame_id)
SlotKey = tuple[str, str, int, int]      # (node, stream, epoch, q)


class _Checker:
    def __init__(self) -> None:
        self.out: list[Violation] = []
        self.slot_frame: dict[SlotKey, str] = {}                  # the sender's assignment
        self.max_appended: dict[tuple[str, str, int], int] = {}   # (node, stream, epoch)
        self.first_append: dict[FrameKey, int] = {}               # append order, per frame
        self.appended_at: dict[FrameKey, int] = {}                # index of the last append
        self.acked: dict[StreamKey, dict[int, int]] = defaultdict(dict)  # epoch -> max q
        self.epoch: dict[StreamKey, int] = {}                     # receiver's current epoch
        self.cursor: dict[tuple[str, str, int], int] = {}         # (node, stream, epoch)
        self.last_order: dict[StreamKey, tuple[int, str]] = {}    # last applied append index
        self.applies: dict[FrameKey, int] = defaultdict(int)
        self.effects: dict[FrameKey, int] = {}
        self.audited: set[StreamKey] = set()
        self.gaps: list[tuple[int, Gap]] = []
        self.store_lost_at: dict[StreamKey, int] = {}
        self.epoch_started_at: dict[StreamKey, list[int]] = defaultdict(list)
        # Where each (node, stream, epoch, q) moved the receiver's cursor: an apply, or a
        # frame skipped by its idempotency key.
        self.advanced_at: dict[SlotKey, list[int]] = defaultdict(list)
        self.recovered_slots: set[SlotKey] = set()  # applied by a recovered cursor only
        self.owner: dict[str, tuple[str | None, str | None]] = {}
        self.fenced: dict[str, set[str]] = defaultdict(set)
        self.sessions: dict[str, list[str]] = defaultdict(list)
        self.drained_at: int | None = None  # index of the last ``drained``
        self.commands: dict[str, str] = {}
        self.states: dict[str, list[CmdState]] = defaultdict(list)
        self.markers: dict[str, int] = defaultdict(int)

    def add(self, kind: str, node: str | None = None, stream: str | None = None,
            seq: int | None = None, detail: str = "") -> None:
        self.out.append(Violation(kind, node, stream, seq, detail))

    # -- the walk, in history order ------------------------------------------------------

    def step(self, index: int, record: Record) -> None:
        handler = getattr(self, f"on_{type(record).__name__}", None)
        if handler is not None:
            handler(index, record)

    def on_Append(self, index: int, r: Append) -> None:
        key = (r.node, r.stream, r.frame_id)
        self.slot_frame[(r.node, r.stream, r.epoch, r.q)] = r.frame_id
        epoch_key = (r.node, r.stream, r.epoch)
        self.max_appended[epoch_key] = max(self.max_appended.get(epoch_key, 0), r.q)
        self.first_append.setdefault(key, index)
        self.appended_at[key] = index
        self.epoch.setdefault((r.node, r.stream), r.epoch)

    def on_EpochStart(self, index: int, r: EpochStart) -> None:
        self.epoch[(r.node, r.stream)] = r.epoch
        self.cursor[(r.node, r.stream, r.epoch)] = r.cursor
        self.epoch_started_at[(r.node, r.stream)].append(index)
        if r.reason == "sender_store_lost":
            self.store_lost_at[(r.node, r.stream)] = index

    def on_Acked(self, index: int, r: Acked) -> None:
        acked = self.acked[(r.node, r.stream)]
        acked[r.epoch] = max(acked.get(r.epoch, 0), r.q)
        highest = self.max_appended.get((r.node, r.stream, r.epoch), 0)
        if r.q > highest:
            self.add("ack_unknown_frame", r.node, r.stream, r.q,
                     f"ack up to q={r.q} in epoch {r.epoch}, beyond q={highest}, the last "
                     "appended")

    def on_Duplicate(self, index: int, r: Duplicate) -> None:
        # A frame skipped because its idempotency key was applied before still moves the
        # cursor (docs/protocol.md §2); one at or below the cursor leaves it where it is.
        cursor_key = (r.node, r.stream, r.epoch)
        if r.q == self.cursor.get(cursor_key, 0) + 1:
            self.cursor[cursor_key] = r.q
            self.advanced_at[(r.node, r.stream, r.epoch, r.q)].append(index)

    def on_Pending(self, index: int, r: Pending) -> None:
        if (r.node, r.stream, r.epoch, r.q) not in self.slot_frame:
            self.on_Append(index, Append(r.node, r.stream, r.frame_id, r.epoch, r.q))

    def on_Recovered(self, index: int, r: Recovered) -> None:
        # The durable cursor is ahead of the applies recorded: the frames in between were
        # committed by a process that died before recording them (or that records them
        # later: on_Applied takes such a record as a confirmation, not a second apply).
        if self.epoch.get((r.node, r.stream), r.epoch) != r.epoch:
            return  # another epoch began since; its own records judge it
        for q in range(self.cursor.get((r.node, r.stream, r.epoch), 0) + 1, r.cursor + 1):
            self.recovered_slots.add((r.node, r.stream, r.epoch, q))
            self._apply(index, Applied(r.node, r.stream, r.epoch, q, session=""),
                        fencing=False)

    def on_Applied(self, index: int, r: Applied) -> None:
        slot = (r.node, r.stream, r.epoch, r.q)
        if slot in self.recovered_slots:  # the late record of an apply recovered above
            self.recovered_slots.discard(slot)
            return
        self._apply(index, r, fencing=True)

    def _apply(self, index: int, r: Applied, *, fencing: bool) -> None:
        stream_key = (r.node, r.stream)
        frame_id = self.slot_frame.get((r.node, r.stream, r.epoch, r.q))
        if r.frame_id is not None and frame_id is not None and r.frame_id != frame_id:
            self.add("misapplied", r.node, r.stream, r.q,
                     f"applied {r.frame_id} at epoch {r.epoch} q={r.q}, where the sender "
                     f"appended {frame_id}")
        frame_id = r.frame_id or frame_id
        if frame_id is None:
            self.add("unknown_frame", r.node, r.stream, r.q,
                     f"applied epoch {r.epoch} q={r.q}, which no append names")
            return
        if fencing:
            self._check_fencing(r, frame_id)
        current = self.epoch.setdefault(stream_key, r.epoch)
        if r.epoch != current:
            self.add("stale_epoch_apply", r.node, r.stream, r.q,
                     f"{frame_id} applied in epoch {r.epoch} after epoch {current} began")
        cursor_key = (r.node, r.stream, r.epoch)
        cursor = self.cursor.get(cursor_key, 0)
        if r.q <= cursor:
            self.add("duplicate_apply", r.node, r.stream, r.q,
                     f"{frame_id} applied at q={r.q} with the cursor already at {cursor} "
                     f"(epoch {r.epoch})")
        elif r.q > cursor + 1:
            self.add("out_of_order", r.node, r.stream, r.q,
                     f"{frame_id} applied at q={r.q} with the cursor at {cursor}: it skipped "
                     f"q={cursor + 1}..{r.q - 1} (epoch {r.epoch})")
        self.cursor[cursor_key] = max(cursor, r.q)
        self.advanced_at[(r.node, r.stream, r.epoch, r.q)].append(index)
        key = (r.node, r.stream, frame_id)
        self.applies[key] += 1
        if self.applies[key] == 2 and r.q > cursor:
            self.add("duplicate_apply", r.node, r.stream, r.q,
                     f"{frame_id} applied a second time (epoch {r.epoch} q={r.q})")
        order = self.first_append.get(key)
        if order is None:
            self.add("unknown_frame", r.node, r.stream, r.q, f"{frame_id} was never appended")
            return
        last = self.last_order.get(stream_key)
        if last is not None and order < last[0]:
            self.add("out_of_order", r.node, r.stream, r.q,
                     f"{frame_id} applied after {last[1]}, which was appended after it")
        if last is None or order > last[0]:
            self.last_order[stream_key] = (order, frame_id)

    def _check_fencing(self, r: Applied, frame_id: str) -> None:
        # Fencing is the controller's (PROTOCOL.md §4): it must not apply what a fenced
        # connection sent. A node applies ``cmd`` frames from its one link, in cursor order,
        # and may commit a batch read before the controller closed that session; its
        # cursor and idempotency keys (the checks above) are what keep that safe.
        if r.stream != "evt":
            return
        if r.session in self.fenced[r.node]:
            self.add("apply_from_fenced", r.node, r.stream, r.q,
                     f"{frame_id} applied from session {r.session}, fenced earlier")
            return
        if r.stream != "evt" or r.node not in self.owner:
            return
        replica, session = self.owner[r.node]
        if replica is None or r.replica != replica:
            self.add("apply_without_ownership", r.node, r.stream, r.q,
                     f"{frame_id} applied by replica {r.replica}; the owner was "
                     f"{replica or 'nobody'}")
        elif session is not None and r.session != session:
            self.add("apply_from_fenced", r.node, r.stream, r.q,
                     f"{frame_id} applied from session {r.session}; the node's current "
                     f"session was {session}")

    def on_Gap(self, index: int, r: Gap) -> None:
        self.gaps.append((index, r))

    def on_Effect(self, index: int, r: Effect) -> None:
        self.audited.add((r.node, r.stream))
        self.effects[(r.node, r.stream, r.frame_id)] = r.count

    def on_Claimed(self, index: int, r: Claimed) -> None:
        for session in self.sessions[r.node]:
            if session != r.session:
                self.fenced[r.node].add(session)
        self.sessions[r.node].append(r.session)
        self.fenced[r.node].discard(r.session)
        self.owner[r.node] = (r.replica, r.session)

    def on_Fenced(self, index: int, r: Fenced) -> None:
        self.fenced[r.node].add(r.session)

    def on_OwnershipLost(self, index: int, r: OwnershipLost) -> None:
        if self.owner.get(r.node, (None, None))[0] == r.replica:
            self.owner[r.node] = (None, None)

    def on_Drained(self, index: int, r: Drained) -> None:
        self.drained_at = index

    def on_CmdSubmit(self, index: int, r: CmdSubmit) -> None:
        self.commands[r.command_id] = r.node

    def on_CmdState(self, index: int, r: CmdState) -> None:
        self.states[r.command_id].append(r)

    def on_Marker(self, index: int, r: Marker) -> None:
        self.markers[r.command_id] += 1

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> list[Violation]:
        self._finish_frames()
        self._finish_gaps()
        self._finish_commands()
        return self.out

    def _effect_count(self, key: FrameKey) -> int:
        if (key[0], key[1]) in self.audited:
            return self.effects.get(key, 0)
        return self.applies.get(key, 0)

    def _finish_frames(self) -> None:
        acked_frames: set[FrameKey] = set()
        for (node, stream, epoch, q), frame_id in self.slot_frame.items():
            if q <= self.acked[(node, stream)].get(epoch, 0):
                acked_frames.add((node, stream, frame_id))
        for key in sorted(set(self.first_append) | set(self.effects)):
            node, stream, frame_id = key
            count = self._effect_count(key)
            if count > 1 and (node, stream) in self.audited:
                self.add("duplicate_effect", node, stream, None,
                         f"{frame_id}'s effect is present {count} times")
            if count >= 1:
                continue
            if key in acked_frames:
                self.add("lost_acked", node, stream, None,
                         f"{frame_id} was acked but its effect is absent")
            elif (self.drained_at is not None and key in self.first_append
                  and self.first_append[key] < self.drained_at):  # appended before it
                lost_at = self.store_lost_at.get((node, stream))
                if lost_at is None or self.appended_at[key] > lost_at:
                    self.add("undelivered", node, stream, None,
                             f"{frame_id} was appended and never applied by the end")

    def _finish_gaps(self) -> None:
        for index, gap in self.gaps:
            stream_key = (gap.node, gap.stream)
            next_q = (gap.node, gap.stream, gap.epoch, gap.applied + 1)
            repaired = any(i > index for i in self.advanced_at.get(next_q, ()))
            new_epoch = any(i > index for i in self.epoch_started_at.get(stream_key, ()))
            if not (repaired or new_epoch):
                self.add("unrepaired_gap", gap.node, gap.stream, gap.applied + 1,
                         f"saw q={gap.q} at cursor {gap.applied} (epoch {gap.epoch}); "
                         f"q={gap.applied + 1} never applied after")

    def _finish_commands(self) -> None:
        for command_id in sorted(set(self.states) | set(self.markers)):
            if command_id not in self.commands:
                self.add("unknown_command", detail=f"{command_id} has states or markers "
                                                   "but was never submitted")
        for command_id, node in sorted(self.commands.items()):
            states = self.states.get(command_id, [])
            final = states[-1].state if states else None
            where = f"command {command_id}"
            first_terminal: str | None = None
            rank = -1
            for seen in states:
                if first_terminal is not None and seen.state != first_terminal:
                    self.add("terminal_state_changed", node, "cmd", None,
                             f"{where} went from {first_terminal} to {seen.state}")
                elif _STATE_RANK.get(seen.state, 0) < rank:
                    self.add("state_regressed", node, "cmd", None,
                             f"{where} went back to {seen.state}")
                rank = max(rank, _STATE_RANK.get(seen.state, 0))
                if seen.state in TERMINAL_STATES and first_terminal is None:
                    first_terminal = seen.state
            if final not in TERMINAL_STATES:
                self.add("command_not_terminal", node, "cmd", None,
                         f"{where} ended the history {final or 'with no state seen'}")
            ran = self.markers.get(command_id, 0)
            if ran > 1:
                self.add("executed_twice", node, "cmd", None, f"{where} ran {ran} times")
            if first_terminal == "succeeded" and ran == 0:
                self.add("succeeded_without_effect", node, "cmd", None,
                         f"{where} succeeded but its marker is absent")
            if first_terminal in _NEVER_RUN and ran > 0:
                self.add("effect_without_execution", node, "cmd", None,
                         f"{where} ended {first_terminal} yet ran {ran} time(s)")


def check(records: Iterable[Record]) -> list[Violation]:
    """Check a whole history; return every violation found (empty: all promises kept).

    ``records`` must be in event order (as :func:`tools.soak.history.load` returns them, or
    :func:`tools.soak.history.stream` yields them). One pass; memory grows with the number of
    frames and commands, not of records.
    """
    checker = _Checker()
    for index, record in enumerate(records):
        checker.step(index, record)
    return checker.finish()

"""A stateful model of the store's commands and cmd stream (hypothesis), on SQLite: whatever
the order of submits, hellos, sends, acks, statuses and cancels, every command is in the
state the pure rules (controller/domain/commands.py) give it, and the downlink holds exactly
the unacked frames of the current epoch, numbered without gaps."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tether.common.sqlitedb import Database
from tether.controller.domain.commands import TERMINAL_STATES, on_status
from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.schema import SQLITE_MIGRATIONS
from tether.protocol.codec import decode_msgpack
from tether.protocol.errors import Conflict

from .helpers import evt, status


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.db = Database(Path(self.dir.name) / "c.db", migrations=SQLITE_MIGRATIONS,
                           durability="process")
        self.run(self.db.open())
        self.store = ControllerStore(self.db)
        self.run(self._enroll())
        self.states: dict[str, str] = {}  # command id -> state, by the rules
        self.sequenced: list[str] = []  # command ids in the current epoch, by q
        self.session: str | None = None
        self.epoch = 0
        self.applied = 0  # the node's applied cursor on the cmd stream
        self.sent = 0
        self.evt_q = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _enroll(self) -> None:
        token, _ = await self.store.create_join_token(ttl_s=60, uses=1, labels={},
                                                      actor="t")
        await self.store.enroll(join_token=token, node_id="n1", public_key=b"k" * 32,
                                labels={})

    def teardown(self) -> None:
        self.run(self.db.close())
        self.loop.close()
        self.dir.cleanup()

    @rule()
    def submit(self) -> None:
        command, created = self.run(self.store.submit_command(
            node_id="n1", kind="exec", args={"argv": ["true"]}, ttl_s=None, idem_key=None,
            actor="t"))
        assert created
        self.states[command.command_id] = "queued"
        if self.session is not None:
            self.sequenced.append(command.command_id)

    @rule(ahead=st.booleans())
    def hello(self, ahead: bool) -> None:
        acked = self.sent + 5 if ahead else self.applied
        opened = self.run(self.store.open_session(
            node_id="n1", remote="r", previous_session=self.session, evt_epoch=1,
            cmd_acked=acked, runtime={}, sidecar={}, capabilities=[], labels={}))
        self.session = opened.session_id
        assert opened.cmd_epoch_rotated == ahead  # an ack past what was sent: new epoch
        if opened.cmd_epoch_rotated:  # unacked frames renumbered from 1
            self.sequenced = self.sequenced[self.applied:]
            self.applied = self.sent = 0
        self.epoch = opened.cmd_epoch
        self.evt_q = opened.evt_applied
        unsequenced = [c for c, s in self.states.items()
                       if s == "queued" and c not in self.sequenced]
        self.sequenced.extend(unsequenced)

    @precondition(lambda self: self.session is not None)
    @rule(data=st.data())
    def send_and_ack(self, data: st.DataObject) -> None:
        last = len(self.sequenced)
        self.sent = data.draw(st.integers(self.sent, last))
        self.run(self.store.note_cmd_sent("n1", self.session, self.epoch, self.sent))
        n = data.draw(st.integers(self.applied, self.sent))
        delivered = self.run(self.store.ack_cmd("n1", self.session, self.epoch, n))
        expected = [c for c in self.sequenced[self.applied:n]
                    if self.states[c] == "queued"]
        assert sorted(delivered) == sorted(expected)
        for command_id in expected:
            self.states[command_id] = "delivered"
        self.applied = max(self.applied, n)

    @precondition(lambda self: self.session is not None and self.states)
    @rule(data=st.data(), state=st.sampled_from(["running", "paused", "succeeded",
                                                  "failed"]))
    def report(self, data: st.DataObject, state: str) -> None:
        # in submit order (ids are random): a replayed example draws the same command
        command_id = data.draw(st.sampled_from(list(self.states)))
        self.evt_q += 1
        (effect,) = self.run(self.store.apply_evt(
            node_id="n1", session_id=self.session,
            frames=[evt(self.evt_q, status(command_id, state))]))
        decision = on_status(self.states[command_id], state)
        assert effect.applied == decision.apply
        self.states[command_id] = decision.state

    @precondition(lambda self: bool(self.states))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        # in submit order (ids are random): a replayed example draws the same command
        command_id = data.draw(st.sampled_from(list(self.states)))
        try:
            command, sent = self.run(self.store.control_command(command_id, "cancel",
                                                                actor="t"))
        except Conflict:
            assert self.states[command_id] in TERMINAL_STATES
            return
        assert self.states[command_id] not in TERMINAL_STATES
        if not sent:  # never sequenced: cancelled by the controller alone (Rule 2)
            assert command_id not in self.sequenced and command.state == "cancelled"
            self.states[command_id] = "cancelled"
            return
        # a control command follows the target on the stream (sequenced at once when
        # the node has a session, else queued like any command)
        rows, _ = self.run(self.store.list_commands(node_id="n1", state=None, limit=1))
        (control,) = rows
        assert control.kind == "cancel" and control.args == {"command_id": command_id}
        self.states[control.command_id] = "queued"
        if self.session is not None:
            self.sequenced.append(control.command_id)

    @invariant()
    def states_follow_the_rules(self) -> None:
        stored = self.run(self.store.command_states(list(self.states)))
        assert stored == self.states

    @invariant()
    def the_downlink_holds_the_unacked_frames_without_gaps(self) -> None:
        if self.session is None:
            return
        frames = self.run(self.store.downlink_after("n1", self.epoch, 0, 10_000))
        assert [q for q, _ in frames] == list(range(self.applied + 1,
                                                    len(self.sequenced) + 1))
        assert [decode_msgpack(f).b["command_id"] for _, f in frames] == \
            self.sequenced[self.applied:]


StoreModel.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_the_store_keeps_commands_and_the_cmd_stream_as_the_rules_say = StoreModel.TestCase

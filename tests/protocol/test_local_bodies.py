"""Issue 11 item 2: the local link's bodies (runtime -> sidecar) are typed with the edge's
value rules, so nothing the sidecar puts into a hello or a heartbeat can carry a value the
controller refuses."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol.errors import BadFrame
from tether.protocol.frames import Body, Frame, Heartbeat, Hello
from tether.protocol.local import (
    LOCAL_BODY_TYPES,
    LocalAttach,
    LocalDetach,
    LocalGoodbye,
    LocalReconnect,
    LocalState,
)

ATTACH = {"node_id": "n1", "epoch": 7, "cmd_applied": 3, "session_id": None,
          "runtime": {"state": "attached", "version": "1.0"}, "capabilities": ["exec"],
          "labels": {"site": "a"}, "pid": 42}

HOSTILE: list[tuple[type[Body], dict[str, Any]]] = [
    (LocalAttach, {**ATTACH, "epoch": 2**64}),
    (LocalAttach, {**ATTACH, "epoch": float("nan")}),
    (LocalAttach, {**ATTACH, "cmd_applied": 2**63}),
    (LocalAttach, {**ATTACH, "cmd_applied": -1}),
    (LocalAttach, {**ATTACH, "node_id": b"n1"}),
    (LocalAttach, {**ATTACH, "runtime": {"version": b"1.0"}}),
    (LocalAttach, {**ATTACH, "labels": {"k": float("inf")}}),
    (LocalAttach, {**ATTACH, "capabilities": [1]}),
    (LocalAttach, {**ATTACH, "pid": 2**40}),
    (LocalState, {"outbox": {"depth": float("nan")}}),
    (LocalState, {"outbox": {"last": 2**64}}),
    (LocalState, {"outbox": []}),
    (LocalDetach, {"state": "attached"}),
    (LocalDetach, {"state": b"detached"}),
    (LocalGoodbye, {"reason": b"bye"}),
    (LocalGoodbye, {"reason": "x" * 2000}),
    (LocalReconnect, {"epoch": -1}),
    (LocalReconnect, {}),
]


@pytest.mark.parametrize(("cls", "body"), HOSTILE,
                         ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(HOSTILE)])
def test_a_hostile_local_body_is_a_bad_frame(cls: type[Body], body: dict[str, Any]) -> None:
    with pytest.raises(BadFrame):
        cls.parse(Frame(t=cls.TYPE, b=body))


def test_what_the_runtime_sends_parses_and_round_trips() -> None:
    attach = LocalAttach.from_body(ATTACH)
    assert LocalAttach.from_body(attach.to_body()) == attach
    assert attach.runtime.version == "1.0" and attach.cmd_applied == 3
    state = LocalState.from_body({"outbox": {"depth": 1, "last": 5, "acked": 4}})
    assert state.outbox.to_map() == {"depth": 1, "last": 5, "acked": 4}
    assert LocalDetach.from_body({}).state == "detached"
    assert LocalGoodbye.from_body({}).reason == ""
    assert LocalReconnect.from_body({"epoch": 9}).epoch == 9
    assert set(LOCAL_BODY_TYPES) == {"local.attach", "local.state", "local.detach",
                                     "local.goodbye", "local.reconnect", "local.update"}


@settings(max_examples=200, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["depth", "oldest_age_s", "last", "acked", "x"]),
                       st.none() | st.integers() | st.floats() | st.text() | st.binary()))
def test_an_outbox_the_sidecar_accepts_always_makes_a_heartbeat_the_controller_accepts(
        outbox: dict[str, Any]) -> None:
    try:
        state = LocalState.from_body({"outbox": outbox})
    except BadFrame:
        return
    hb = Heartbeat(uptime_s=1.0, outbox=state.outbox)
    assert Heartbeat.from_body(hb.to_body()) == hb


def test_an_attach_the_sidecar_accepts_makes_a_hello_the_controller_accepts() -> None:
    attach = LocalAttach.from_body(ATTACH)
    hello = Hello(node_id=attach.node_id, sig=b"s" * 64, epoch=attach.epoch,
                  acks={"cmd": attach.cmd_applied}, runtime=attach.runtime,
                  capabilities=attach.capabilities, labels=attach.labels)
    assert Hello.from_body(hello.to_body()) == hello

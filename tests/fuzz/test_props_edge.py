"""Fuzz the edge before authentication (PROTOCOL.md §4): the upgrade's sub-protocol offer
and the first frame after the challenge, driven through the real app in process.

Whatever a peer sends first, the controller ends it with a close code the contract names
for it (4400, 4401, 4426, 1009, ...) or welcomes a correctly signed hello; never 1011 and
never an exception out of the handler.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tether.controller.app import EDGE_PATH
from tether.protocol.classes import EVT_STREAM, FRAME_STREAM
from tether.protocol.codec import MSGPACK_SUBPROTOCOL, decode_msgpack, encode_msgpack
from tether.protocol.frames import BODY_TYPES, Frame

from .asgi import HANDLED_CLOSE_CODES, Controller, Outcome, assert_error_shape
from .seeds import SAMPLES
from .strategies import (
    fields_of,
    fuzz_settings,
    msgpack_values,
    mutated_body,
    packb,
    poison_values,
)

FIELDS = fields_of(BODY_TYPES)
# what a node sends after the welcome: every body type but the controller's own
NODE_TYPES = sorted(set(BODY_TYPES) - {"edge.challenge", "edge.welcome", "edge.heartbeat_ack",
                                       "cmd.deliver", "edge.hello"})
TOKEN_CHARS = string.ascii_letters + string.digits + ".-_"  # what a header token may hold
frame_types = st.sampled_from(sorted({*BODY_TYPES, "edge.batch", "hello", "x"}))
hostile_bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                                 msgpack_values, max_size=6)


def assert_refused(outcome: Outcome) -> None:
    assert outcome.reply is None, f"answered an unauthenticated frame with {outcome.reply}"
    assert outcome.close_code in HANDLED_CLOSE_CODES, outcome


@fuzz_settings(200)
@given(data=st.binary(max_size=300) | st.text(max_size=100))
def test_any_bytes_or_text_as_the_first_frame_are_refused_with_a_documented_close_code(
        ctl: Controller, data: bytes | str) -> None:
    assert_refused(ctl.edge_first_frame(data))


@fuzz_settings(200)
@given(t=frame_types, body=hostile_bodies,
       envelope=st.dictionaries(st.sampled_from(["id", "re", "s", "q", "k"]),
                                msgpack_values, max_size=3))
def test_any_msgpack_frame_as_the_first_frame_is_refused_with_a_documented_close_code(
        ctl: Controller, t: str, body: dict[str, Any], envelope: dict[str, Any]) -> None:
    data = packb({"t": t, "b": body, **envelope})
    if data is not None:
        assert_refused(ctl.edge_first_frame(data))


@fuzz_settings(200)
@given(node_id=st.sampled_from([Controller.node_id, "unknown-node"]) | st.text(max_size=70),
       overrides=st.dictionaries(st.sampled_from(
           ["node_id", "protocol", "sig", "epoch", "acks", "session_id", "runtime",
            "sidecar", "capabilities", "labels"]), msgpack_values, max_size=4))
def test_a_hello_that_is_not_signed_by_the_enrolled_key_is_never_welcomed(
        ctl: Controller, node_id: str, overrides: dict[str, Any]) -> None:
    body = {"node_id": node_id, "protocol": 1, "sig": b"\x00" * 64, "epoch": 7,
            "acks": {"cmd": 0}, "runtime": {"state": "attached"}, **overrides}
    data = packb({"t": "edge.hello", "b": body})
    if data is not None:
        assert_refused(ctl.edge_first_frame(data))


@fuzz_settings(150)
@given(overrides=st.dictionaries(st.sampled_from(
    ["protocol", "epoch", "acks", "session_id", "runtime", "sidecar", "capabilities",
     "labels"]), msgpack_values, max_size=4))
def test_a_signed_hello_with_hostile_fields_is_welcomed_or_refused_never_crashes(
        ctl: Controller, overrides: dict[str, Any]) -> None:
    def build(nonce: bytes, controller_id: str) -> bytes:
        frame = ctl.signed_hello(nonce, controller_id, **overrides)
        return packb(frame.to_wire()) or encode_msgpack(ctl.signed_hello(nonce, controller_id))

    outcome = ctl.edge_hello(build)
    if outcome.reply is not None:
        assert outcome.reply.t == "edge.welcome", outcome
    else:
        assert outcome.close_code in HANDLED_CLOSE_CODES, outcome
    # reading is total: what the hello stored never breaks an operator's read
    for path in ("/api/v1/nodes", f"/api/v1/nodes/{ctl.node_id}"):
        resp = ctl.rest("GET", path)
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
        assert_error_shape(resp)


@fuzz_settings(60)
@given(offer=st.lists(st.sampled_from([MSGPACK_SUBPROTOCOL, "tether.v1.json", "x", ""])
                      | st.text(TOKEN_CHARS, min_size=1, max_size=20),
                      max_size=3))
def test_any_sub_protocol_offer_gets_the_challenge_or_4426(ctl: Controller,
                                                           offer: list[str]) -> None:
    outcome = ctl.edge_first_frame(encode_msgpack(Frame(t="edge.goodbye")),
                                   subprotocols=offer)
    if MSGPACK_SUBPROTOCOL in offer:
        assert outcome.close_code == 4400, outcome  # the challenge came; goodbye is early
    else:
        assert outcome.close_code == 4426, outcome


def test_a_json_text_hello_on_the_msgpack_edge_is_refused_with_4400(ctl: Controller) -> None:
    outcome = ctl.edge_first_frame(json.dumps({"t": "edge.hello", "b": {}}))
    assert outcome.close_code == 4400, outcome


# --- after the welcome (issue 11 item 2: poison frames) ------------------------------------

def session_answer(ctl: Controller, frame: dict[str, Any]) -> tuple[str, int | None]:
    """Open a session for the enrolled node, send ``frame`` then a heartbeat: ("alive",
    None) when the heartbeat is acked, ("closed", code) when the session ended first."""
    with ctl.client.websocket_connect(EDGE_PATH, subprotocols=[MSGPACK_SUBPROTOCOL]) as ws:
        challenge = decode_msgpack(ws.receive_bytes())
        ws.send_bytes(encode_msgpack(ctl.signed_hello(
            bytes(challenge.b["nonce"]), str(challenge.b["controller_id"]))))
        assert decode_msgpack(ws.receive_bytes()).t == "edge.welcome"
        data = packb(frame)
        if data is None:
            return "alive", None
        ws.send_bytes(data)
        ws.send_bytes(encode_msgpack(Frame(t="edge.heartbeat", id="after", b={})))
        while True:
            msg = ws.receive()
            if msg["type"] == "websocket.close":
                return "closed", msg.get("code")
            reply = decode_msgpack(msg["bytes"])
            if reply.t == "edge.heartbeat_ack" and reply.re == "after":
                return "alive", None


@settings(fuzz_settings(100), phases=[Phase.generate])
@given(data=st.data())
def test_any_frame_after_the_welcome_is_answered_or_closed_as_documented_and_reads_stay_200(
        ctl: Controller, data: st.DataObject) -> None:
    # the frames a node sends (PROTOCOL.md §3), each a valid body with poison in it
    t = data.draw(st.sampled_from(NODE_TYPES), label="t")
    body = data.draw(mutated_body(SAMPLES.get(t, {}), FIELDS, poison_values), label="body")
    frame: dict[str, Any] = {"t": t, "b": body}
    if FRAME_STREAM.get(t) == EVT_STREAM:  # class A: q=1 on a fresh evt epoch each time
        ctl.epoch += 1
        frame |= {"s": EVT_STREAM, "q": 1}
    state, code = session_answer(ctl, frame)
    assert state == "alive" or code in HANDLED_CLOSE_CODES, (state, code)
    for path in ("/api/v1/nodes", f"/api/v1/nodes/{ctl.node_id}", "/api/v1/commands",
                 f"/api/v1/nodes/{ctl.node_id}/monitor", f"/api/v1/nodes/{ctl.node_id}/events"):
        resp = ctl.rest("GET", path)
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])

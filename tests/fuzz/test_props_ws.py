"""Fuzz the operator stream ``/ws`` (PROTOCOL.md §9, JSON): its hello before
authentication, and the frames an authenticated client sends after it, through the real
app in process.

Before the welcome, every message ends with a documented close code (4400, 4401, 4426,
1009) unless it carries a valid operator token; after it, every frame gets a reply or a
documented close, never 1011 and never an exception out of the handler.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.codec import JSON_SUBPROTOCOL, encode_json
from tether.protocol.frames import Frame

from .asgi import HANDLED_CLOSE_CODES, Controller, Outcome
from .strategies import fuzz_settings, json_text, json_values

WS_TYPES = ["hello", "subscribe", "ping", "unsubscribe", "edge.hello", "x"]


def json_message(obj: Any) -> str:
    """What a JSON peer sends for ``obj``: Python's encoder writes NaN and big integers
    and escapes lone surrogates, as a hostile client may."""
    return json.dumps(obj)


def assert_refused(outcome: Outcome) -> None:
    assert outcome.reply is None, f"answered an unauthenticated frame with {outcome.reply}"
    assert outcome.close_code in HANDLED_CLOSE_CODES, outcome


@fuzz_settings(150)
@given(data=st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_or_bytes_as_the_ws_hello_is_refused_with_a_documented_close_code(
        ctl: Controller, data: str | bytes) -> None:
    assert_refused(ctl.ws_first_frame(data))


@fuzz_settings(200)
@given(t=st.sampled_from(WS_TYPES) | json_text,
       body=st.dictionaries(st.sampled_from(["token", "topics"]) | json_text, json_values,
                            max_size=4),
       envelope=st.dictionaries(st.sampled_from(["id", "re", "s", "q", "k"]), json_values,
                                max_size=3))
def test_any_json_frame_as_the_ws_hello_is_refused_unless_it_carries_the_token(
        ctl: Controller, t: Any, body: dict[str, Any], envelope: dict[str, Any]) -> None:
    assert_refused(ctl.ws_first_frame(json_message({"t": t, "b": body, **envelope})))


@fuzz_settings(40)
@given(offer=st.lists(st.sampled_from([JSON_SUBPROTOCOL, "tether.v1.msgpack"])
                      | st.text(string.ascii_letters + ".-", min_size=1, max_size=20),
                      max_size=3))
def test_any_sub_protocol_offer_gets_a_ws_hello_answer_or_4426(ctl: Controller,
                                                              offer: list[str]) -> None:
    outcome = ctl.ws_first_frame(json_message({"t": "hello", "b": {"token": "wrong"}}),
                                 subprotocols=offer)
    assert outcome.close_code == (4401 if JSON_SUBPROTOCOL in offer else 4426), outcome


def test_the_right_token_is_welcomed(ctl: Controller) -> None:
    outcome = ctl.ws_first_frame(encode_json(Frame(t="hello", b={"token": ctl.token})))
    assert outcome.reply is not None and outcome.reply.t == "welcome", outcome


# --- after the welcome ---------------------------------------------------------------------

topics = (st.sampled_from(["nodes", f"node:{Controller.node_id}", "command:c-1",
                           f"commands:{Controller.node_id}", "logs:c-1",
                           f"monitor:{Controller.node_id}"])
          | st.text(max_size=20) | json_values)


@fuzz_settings(150)
@given(t=st.sampled_from(WS_TYPES), frame_id=st.none() | json_text | json_values,
       body=st.fixed_dictionaries({}, optional={"topics": st.lists(topics, max_size=4)
                                                | json_values}))
def test_any_frame_after_the_ws_welcome_gets_a_reply_or_a_documented_close(
        ctl: Controller, t: str, frame_id: Any, body: dict[str, Any]) -> None:
    with ctl.client.websocket_connect("/ws", subprotocols=[JSON_SUBPROTOCOL]) as ws:
        ws.send_text(encode_json(Frame(t="hello", b={"token": ctl.token})))
        assert json.loads(ws.receive_text())["t"] == "welcome"
        obj = {"t": t, "b": body} if frame_id is None else {"t": t, "b": body, "id": frame_id}
        ws.send_text(json_message(obj))
        ws.send_text(encode_json(Frame(t="ping", id="after")))
        # the answers to the fuzzed frame (or a close), then the pong: the session lives
        while True:
            msg = ws.receive()
            if msg["type"] == "websocket.close":
                assert msg.get("code") in HANDLED_CLOSE_CODES, msg
                return
            reply = json.loads(msg["text"])
            if reply.get("t") == "pong" and reply.get("re") == "after":
                return

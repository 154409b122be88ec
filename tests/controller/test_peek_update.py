"""A peek reply carries the session's runtime self-update (heartbeat `update`), checked like
the rest of a reply from another replica; a replica of an older release sends none."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from tether.controller.services.peek import NodePeek, encode_reply, parse_reply, session_map

from .test_peek import SESSION

UPDATING = dataclasses.replace(SESSION, update={"stage": "replay", "version": "9.9.9",
                                                "slot": "a", "age_s": 1.5})


def _reply(session: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": 1, "r": "r-a", "s": session, "m": None, "cut": 0})


def test_the_update_round_trips_through_a_peek() -> None:
    peek = parse_reply(encode_reply(NodePeek("r-a", UPDATING, None, 0)), node_id="n-1")
    assert peek is not None and peek.session is not None
    assert peek.session.update == UPDATING.update


def test_a_reply_without_an_update_reads_as_no_update() -> None:
    session = session_map(SESSION)
    del session["update"]
    peek = parse_reply(_reply(session), node_id="n-1")
    assert peek is not None and peek.session is not None and peek.session.update == {}


@pytest.mark.parametrize("update", [{"stage": "exploding"}, {"stage": "replay",
                                                              "age_s": float("nan")},
                                    "updating", {"stage": "replay", "slot": "c"}])
def test_a_hostile_update_in_a_reply_makes_the_reply_unusable(update: object) -> None:
    session = {**session_map(SESSION), "update": update}
    assert parse_reply(_reply(session), node_id="n-1") is None

"""``file.send`` args at the controller's boundary (protocol/deliver.py ``command_args``):
hostile values are a 400 (BadFrame) before anything is stored."""

from __future__ import annotations

import pytest

from tether.protocol.deliver import command_args
from tether.protocol.errors import BadFrame

GOOD = {"peer_session_id": "link-abc_1", "to_node": "n-2", "src": "a/b.bin", "dst": "c.bin"}


def test_good_file_send_args_pass() -> None:
    assert command_args("file.send", GOOD) == GOOD
    assert command_args("file.send", {k: v for k, v in GOOD.items() if k != "dst"})


@pytest.mark.parametrize("change", [
    {"peer_session_id": "x" * 65}, {"peer_session_id": 7}, {"to_node": "Node"},
    {"to_node": None}, {"src": ""}, {"src": "a\x00b"}, {"src": ["a"]},
    {"dst": "x" * 256}, {"dst": "a\x00"}, {"other": True},
])
def test_hostile_file_send_args_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(BadFrame):
        command_args("file.send", {**GOOD, **change})

"""Issue 11 item 6 (second bullet) end to end, with a real node (runtime + sidecar): a
command whose cmd.deliver would be over the node's frame cap is refused at submit with 413;
one just under it is delivered and runs; the commands after it keep flowing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tether.protocol.codec import MAX_FRAME_BYTES
from tether.protocol.deliver import encode_deliver
from tether.protocol.frames import TERMINAL_STATES

from ..helpers import ControllerProc, NodeProc, wait_until

pytestmark = pytest.mark.both_backends  # tests/e2e/conftest.py: SQLite, PostgreSQL + NATS

MAX_BODY_BYTES = 1 << 20  # the REST body limit (controller/api/routes.py)


def pad_for(frame_size: int) -> int:
    """A pad length whose command frame (as checked at submit) is ``frame_size`` bytes."""
    probe = len(encode_deliver(command_id="c_" + "0" * 32, kind="exec",
                               args={"argv": ["true"], "pad": "x" * 100_000},
                               created_ms=int(time.time() * 1000), deadline_ms=None,
                               max_frame=1 << 40))
    return 100_000 + frame_size - probe


def test_over_the_frame_cap_is_413_at_submit_and_just_under_runs_and_the_stream_flows(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-cap")
    api = controller.api()
    over = api.post("/api/v1/nodes/n-cap/commands", json={
        "kind": "exec", "args": {"argv": ["true"], "pad": "x" * pad_for(MAX_FRAME_BYTES + 1)}})
    assert over.status_code == 413, over.text
    assert over.json()["error"]["code"] == "frame_too_large"
    assert f"{MAX_FRAME_BYTES}-byte" in over.json()["error"]["message"]
    body = {"kind": "exec", "args": {"argv": ["true"], "pad": "x" * pad_for(MAX_FRAME_BYTES)}}
    under = api.post("/api/v1/nodes/n-cap/commands", json=body)
    assert under.status_code == 202, under.text
    assert len(under.request.content) <= MAX_BODY_BYTES
    big = under.json()["command_id"]
    later = [api.submit("n-cap", "exec", {"argv": ["echo", str(i)]})["command_id"]
             for i in range(3)]
    for command_id in [big, *later]:
        done = wait_until(lambda c=command_id: (v := api.command(c))["state"]
                          in TERMINAL_STATES and v, timeout_s=60,
                          what=f"{command_id} to finish")
        assert done["state"] == "succeeded", done
    assert api.liveness("n-cap") == "online"

"""Commands at the REST boundary and on the downlink (issue 11 items 2 and 6), against a
real controller with a raw edge client: hostile args are 400 and stored nowhere; a command
whose cmd.deliver would be over the node's frame cap is 413 at submit; a stored command or
frame an older version let through never wedges the stream."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgpack
import pytest

from tether.protocol.codec import MAX_FRAME_BYTES
from tether.protocol.deliver import REFUSED_KIND, encode_deliver
from tether.protocol.frames import Frame

from ..helpers import ControllerProc
from .conftest import Edge, Identity, assert_error

Enroll = Callable[..., Awaitable[Identity]]
CID = "c_" + "0" * 32


def nested_json(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# Raw bodies: JSON text that Python's json module reads into values JSON and the store
# cannot hold (NaN, Infinity, integers past 64 bits), or shapes the node cannot take.
HOSTILE_BODIES = [
    '{"kind":"diag.ping","args":{"x":NaN}}',
    '{"kind":"diag.ping","args":{"x":Infinity}}',
    '{"kind":"diag.ping","args":{"x":-Infinity}}',
    '{"kind":"diag.ping","args":{"x":[1,NaN]}}',
    '{"kind":"diag.ping","args":{"x":18446744073709551616}}',
    '{"kind":"diag.ping","args":{"x":9223372036854775808}}',
    '{"kind":"diag.ping","args":{"x":-9223372036854775809}}',
    '{"kind":"diag.ping","args":' + nested_json(40) + "}",
    '{"kind":"diag.ping","args":{"x":"\\ud800"}}',
    '{"kind":"exec","args":{"argv":["echo","a\\u0000b"]}}',
    '{"kind":"exec","args":{"argv":["true"],"timeout_s":NaN}}',
    '{"kind":"exec","args":{"argv":["true"],"env":{"A":5}}}',
    '{"kind":"exec","args":{"argv":["true"],"env":{"A=B":"x"}}}',
    '{"kind":"exec","args":{"argv":["true"],"cwd":7}}',
    '{"kind":"\\ud800","args":{}}',
    '{"kind":"exec","args":null}',
]


async def commands_of(api: httpx.AsyncClient, node_id: str) -> list[dict[str, Any]]:
    resp = await api.get("/api/v1/commands", params={"node_id": node_id})
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def test_hostile_command_args_are_400_and_nothing_is_stored(
        api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    for body in HOSTILE_BODIES:
        resp = await api.post(f"/api/v1/nodes/{ident.node_id}/commands", content=body,
                              headers={"Content-Type": "application/json"})
        assert_error(resp, 400, "invalid_request")
    assert await commands_of(api, ident.node_id) == []
    assert (await api.get("/api/v1/nodes")).status_code == 200


def pad_for(size: int) -> int:
    """The length of a pad string that makes the command's frame exactly ``size`` bytes
    (str 16/32 headers are constant over the range used), as checked at submit."""
    probe = len(encode_deliver(command_id=CID, kind="exec",
                               args={"argv": ["true"], "pad": "x" * 70_000},
                               created_ms=int(time.time() * 1000), deadline_ms=None,
                               max_frame=1 << 40))
    return 70_000 + size - probe


async def submit_pad(api: httpx.AsyncClient, node_id: str, pad: int) -> httpx.Response:
    return await api.post(f"/api/v1/nodes/{node_id}/commands",
                          json={"kind": "exec", "args": {"argv": ["true"], "pad": "x" * pad}})


async def test_a_command_over_the_node_announced_cap_is_413_and_one_at_it_is_sent(
        api: httpx.AsyncClient, edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    cap = 96 * 1024
    client = await edge.session(ident, max_frame=cap)
    assert client.welcome is not None and client.welcome.b["max_frame"] == cap
    over = await submit_pad(api, ident.node_id, pad_for(cap + 1))
    err = assert_error(over, 413, "frame_too_large")
    assert f"{cap}-byte" in err["message"]
    assert await commands_of(api, ident.node_id) == []
    at = await submit_pad(api, ident.node_id, pad_for(cap))
    assert at.status_code == 202, at.text
    deliver = await client.recv_type("cmd.deliver")
    assert deliver.b["command_id"] == at.json()["command_id"]
    # and the next command follows it
    nxt = await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                         json={"kind": "exec", "args": {"argv": ["true"]}})
    assert (await client.recv_type("cmd.deliver")).b["command_id"] == nxt.json()["command_id"]


async def test_a_command_for_an_offline_node_is_checked_against_the_controllers_cap(
        api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    resp = await submit_pad(api, ident.node_id, pad_for(MAX_FRAME_BYTES + 1))
    assert_error(resp, 413, "frame_too_large")
    # the shape: floats are 9 bytes in msgpack, 5 here in JSON (an 820 KB body)
    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/commands", json={
        "kind": "diag.ping", "args": {"x": [0.12] * 60_000, "y": "z" * 520_000}})
    assert_error(resp, 413, "frame_too_large")
    assert await commands_of(api, ident.node_id) == []


def write_db(controller: ControllerProc, sql: str, params: tuple[Any, ...]) -> None:
    with sqlite3.connect(controller.data_dir / "controller.db", timeout=10) as db:
        db.execute(sql, params)


def read_db(controller: ControllerProc, sql: str, params: tuple[Any, ...]) -> list[Any]:
    with sqlite3.connect(controller.data_dir / "controller.db", timeout=10) as db:
        return db.execute(sql, params).fetchall()


@pytest.mark.parametrize("stored_args", [
    '{"argv": ["true"], "x": NaN}', '{"argv": ["true"], "x": 18446744073709551616}',
    "not json", json.dumps({"argv": ["true"], "pad": "x" * (MAX_FRAME_BYTES + 10)})])
async def test_a_stored_command_that_cannot_be_sent_is_rejected_and_the_next_one_goes(
        controller: ControllerProc, api: httpx.AsyncClient, edge: Edge, enroll: Enroll,
        stored_args: str) -> None:
    """As an older version stored it: queued, not sequenced, for an offline node."""
    ident = await enroll()
    now = time.time()
    write_db(controller, "INSERT INTO commands (command_id, node_id, kind, args, state, "
             "created_at, updated_at) VALUES (?,?,?,?,'queued',?,?)",
             ("c_legacy", ident.node_id, "exec", stored_args, now, now))
    good = await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                          json={"kind": "exec", "args": {"argv": ["true"]}})
    assert good.status_code == 202, good.text
    client = await edge.session(ident)
    deliver = await client.recv_type("cmd.deliver")
    assert deliver.b["command_id"] == good.json()["command_id"]
    assert deliver.q == 1
    (state, error), = read_db(controller, "SELECT state, error FROM commands WHERE "
                              "command_id='c_legacy'", ())
    assert state == "rejected" and error.startswith("not delivered:")


async def test_a_stored_frame_over_the_cap_gives_way_to_a_placeholder_at_its_number(
        controller: ControllerProc, api: httpx.AsyncClient, edge: Edge,
        enroll: Enroll) -> None:
    """As an older version sequenced it: in the downlink outbox, over the cap; the node
    would close with 1009 at every reconnect and nothing behind it would move."""
    ident = await enroll()
    client = await edge.session(ident)
    first = (await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                            json={"kind": "exec", "args": {"argv": ["true"]}})).json()
    assert (await client.recv_type("cmd.deliver")).q == 1
    await client.close()
    huge = Frame(t="cmd.deliver", s="cmd", q=1, id=first["command_id"], b={
        "command_id": first["command_id"], "kind": "exec",
        "args": {"argv": ["true"], "pad": "x" * (MAX_FRAME_BYTES + 10)}})
    write_db(controller, "UPDATE downlink_outbox SET frame=? WHERE node_id=? AND q=1",
             (msgpack.packb(huge.to_wire(), use_bin_type=True), ident.node_id))
    second = (await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                             json={"kind": "exec", "args": {"argv": ["true"]}})).json()
    again = await edge.session(ident)
    one = await again.recv_type("cmd.deliver")
    assert (one.q, one.b["command_id"], one.b["kind"]) == (1, first["command_id"], REFUSED_KIND)
    two = await again.recv_type("cmd.deliver")
    assert (two.q, two.b["command_id"]) == (2, second["command_id"])
    view = (await api.get(f"/api/v1/commands/{first['command_id']}")).json()
    assert view["state"] == "rejected" and f"{MAX_FRAME_BYTES}-byte" in view["error"]

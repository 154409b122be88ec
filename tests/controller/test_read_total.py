"""Issue 11 item 2, "reading is total": nothing a peer ever stored can make a read endpoint
or a /ws subscription fail, including rows an older version wrote before values were
checked at the edge (simulated by writing them straight into the SQLite file)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tether.protocol.frames import Frame

from ..helpers import ControllerProc, metric
from .conftest import Edge, Identity, json_recv
from .test_browser_ws import logged_in, next_event, send
from .test_edge_session import delivered_command, status

Enroll = Callable[..., Awaitable[Identity]]

# What older versions let through (json.dumps allows NaN; 1e400 reads back as Infinity;
# "\udc80" is a lone surrogate that UTF-8 cannot encode).
BAD_JSON = '{"nan": NaN, "inf": 1e400, "neg": -Infinity, "s": "\\udc80", "big": 1' + "0" * 30 + "}"


def _write_bad_rows(db: str, node_id: str, command_id: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE nodes SET labels='{not json', capabilities=?, policy=?, apps=?, "
                     "closed_at='yesterday', last_seen_at=1e300, runtime_state=5 "
                     "WHERE node_id=?", ("[NaN, \"\\ud800\"]", BAD_JSON, BAD_JSON, node_id))
        conn.execute("INSERT INTO node_events (node_id, kind, data, at) VALUES (?,?,?,?)",
                     (node_id, "app", BAD_JSON, 1e300))
        conn.execute("INSERT INTO node_events (node_id, kind, data, at) VALUES (?,?,?,?)",
                     (node_id, "app", "[[[[truncated", 1.0))
        conn.execute("UPDATE commands SET result=?, args=?, error=?, exit_code=?, "
                     "created_at='x' WHERE command_id=?",
                     (BAD_JSON, '{"argv": ["\\udc80"], "n": NaN}', "fine", 2**63 - 1,
                      command_id))
        conn.execute("INSERT INTO command_events (command_id, state, at, detail) "
                     "VALUES (?, 'running', ?, ?)", (command_id, 'never', None))
    conn.close()


def _strict(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    json.dumps(body, allow_nan=False)  # what any strict JSON client would parse
    return body


async def test_rows_an_older_version_stored_badly_read_as_200_after_a_restart(
        controller: ControllerProc, edge: Edge, enroll: Enroll, api: httpx.AsyncClient,
        ws_url: str) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    await client.close()
    controller.terminate()
    _write_bad_rows(str(controller.data_dir / "controller.db"), ident.node_id, command_id)
    controller.start()

    nodes = _strict(await api.get("/api/v1/nodes"))
    node = next(n for n in nodes["items"] if n["node_id"] == ident.node_id)
    assert node["labels"] == {}  # unreadable JSON reads as its default
    assert node["capabilities"] == [None, "\ufffd"]
    assert node["policy"]["nan"] is None and node["policy"]["inf"] is None
    assert node["policy"]["s"] == "\ufffd"
    # no session: the runtime's state is not known; the stored one reads as stored (TEXT)
    assert node["runtime"]["state"] == "unknown" and node["runtime"]["last_state"] == "5"
    _strict(await api.get(f"/api/v1/nodes/{ident.node_id}"))
    events = _strict(await api.get(f"/api/v1/nodes/{ident.node_id}/events"))
    assert [e["data"] for e in events["items"][:2]] == [
        None, {"nan": None, "inf": None, "neg": None, "s": "\ufffd", "big": 10**30}]
    cmds = _strict(await api.get("/api/v1/commands"))
    assert any(c["command_id"] == command_id for c in cmds["items"])
    cmd = _strict(await api.get(f"/api/v1/commands/{command_id}"))
    assert cmd["args"] == {"argv": ["\ufffd"], "n": None}
    assert cmd["created_at"] is None
    assert cmd["exit_code"] == 2**63 - 1
    _strict(await api.get(f"/api/v1/nodes/{ident.node_id}/monitor"))
    _strict(await api.get("/api/v1/diag"))

    ws = await logged_in(ws_url, controller.token)
    topics = ["nodes", f"node:{ident.node_id}", f"command:{command_id}",
              f"commands:{ident.node_id}"]
    await send(ws, {"t": "subscribe", "id": "s1", "b": {"topics": topics}})
    for topic in topics:
        snap = await json_recv(ws)
        assert snap["t"] == "snapshot" and snap["b"]["topic"] == topic, snap
    assert (await json_recv(ws))["t"] == "subscribed"
    await ws.close()


async def test_an_event_too_big_for_a_ws_frame_is_skipped_and_the_subscriber_kept(
        controller: ControllerProc, edge: Edge, enroll: Enroll, api: httpx.AsyncClient,
        ws_url: str) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    ws = await logged_in(ws_url, controller.token)
    await send(ws, {"t": "subscribe", "id": "s1", "b": {"topics": [f"logs:{command_id}"]}})
    assert (await json_recv(ws))["t"] == "snapshot"
    assert (await json_recv(ws))["t"] == "subscribed"
    # 300 KB of control bytes: each is "\u0001" in JSON, 1.8 MB, over the 1 MiB /ws frame
    await client.send(Frame(t="log.chunk", b={"command_id": command_id, "source": "stdout",
                                              "seq": 1, "data": b"\x01" * 300_000}))
    await client.send(Frame(t="log.chunk", b={"command_id": command_id, "source": "stdout",
                                              "seq": 2, "data": b"after"}))
    await client.send(status(1, command_id, "succeeded", exit_code=0))
    chunk = await next_event(ws, "log.chunk")
    assert chunk["data"]["seq"] == 2 and chunk["data"]["data"] == "after"
    metrics = (await api.get("/metrics")).text
    assert metric(metrics, "tether_ws_events_unencodable_total") == 1
    await ws.send(json.dumps({"t": "ping", "id": "p"}))
    frame = await json_recv(ws)
    while frame["t"] == "event":
        frame = await json_recv(ws)
    assert frame["t"] == "pong"
    await ws.close()

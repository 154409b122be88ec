"""Steady state on /v1/edge/connect (PROTOCOL.md §3-7): heartbeats, errors, supersede,
disable, the evt and cmd streams, goodbye — a raw msgpack client against a real controller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tether.protocol.codec import encode_msgpack
from tether.protocol.frames import Frame

from .conftest import Edge, EdgeClient, Identity, eventually

Enroll = Callable[..., Awaitable[Identity]]


async def submit(api: httpx.AsyncClient, node_id: str, kind: str = "exec",
                 args: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    resp = await api.post(f"/api/v1/nodes/{node_id}/commands", json={
        "kind": kind, "args": {"argv": ["true"]} if args is None else args, **body})
    assert resp.status_code == 202, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def command(api: httpx.AsyncClient, command_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/commands/{command_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def sessions(api: httpx.AsyncClient, node_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/api/v1/nodes/{node_id}/sessions")
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def liveness(api: httpx.AsyncClient, node_id: str) -> str:
    resp = await api.get(f"/api/v1/nodes/{node_id}")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["liveness"])


def status(q: int, command_id: str, state: str, **extra: Any) -> Frame:
    return Frame(t="cmd.status", s="evt", q=q, id=f"st-{q}",
                 b={"command_id": command_id, "state": state, **extra})


async def delivered_command(api: httpx.AsyncClient, client: EdgeClient,
                            node_id: str) -> tuple[str, int]:
    """Submit a command, receive its cmd.deliver and ack it; (command_id, q)."""
    cmd = await submit(api, node_id)
    deliver = await client.recv_type("cmd.deliver")
    assert deliver.b["command_id"] == cmd["command_id"]
    assert deliver.q is not None
    await client.send(Frame(t="edge.ack", b={"acks": {"cmd": deliver.q}}))
    await eventually(lambda: _state_is(api, cmd["command_id"], "delivered"),
                     what="command delivered")
    return cmd["command_id"], deliver.q


async def _state_is(api: httpx.AsyncClient, command_id: str, state: str) -> bool:
    return (await command(api, command_id))["state"] == state


# -- heartbeats and errors ---------------------------------------------------------------

async def test_a_heartbeat_is_answered_with_a_heartbeat_ack_carrying_its_id_and_acks(
        edge: Edge, enroll: Enroll) -> None:
    client = await edge.session(await enroll())
    await client.send(Frame(t="edge.heartbeat", id="hb-42", b={
        "uptime_s": 3.5, "runtime": {"state": "attached", "version": "v"},
        "outbox": {"depth": 0, "oldest_age_s": 0.0}, "acks": {"cmd": 0}}))
    ack = await client.recv()
    assert ack.t == "edge.heartbeat_ack"
    assert ack.re == "hb-42"
    assert isinstance(ack.b["time_ms"], int)
    assert ack.b["acks"] == {"evt": 0}


async def test_a_session_silent_past_stale_after_is_closed_with_4408_but_a_chatty_one_is_not(
        edge: Edge, enroll: Enroll) -> None:
    chatty = await edge.session(await enroll())
    silent = await edge.session(await enroll())
    # stale_after_s is 3 (FAST): the silent one is closed by the sweeper's idle check ...
    closing = asyncio.create_task(silent.expect_close(timeout_s=15))
    try:
        while not closing.done():
            await chatty.send(Frame(t="edge.heartbeat", id="hb", b={"uptime_s": 1}))
            assert (await chatty.recv_type("edge.heartbeat_ack")).re == "hb"
            await asyncio.wait({closing}, timeout=0.5)
        closed = closing.result()
    finally:
        closing.cancel()
    assert closed.code == 4408
    assert closed.reason == "no frame within 3 s"
    # ... while the one that kept talking for longer than that is still served
    await chatty.send(Frame(t="edge.heartbeat", id="hb-last", b={"uptime_s": 2}))
    assert (await chatty.recv_type("edge.heartbeat_ack")).re == "hb-last"


async def test_a_node_that_stops_reading_is_closed_with_4408_not_reading(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    """No timer guards each send: a node that never reads stalls the controller's sends
    (here, commands far larger than the socket buffers), then its read loop, and the idle
    deadline ends the session (stale_after_s is 3 s in FAST)."""
    ident = await enroll()
    client = await edge.session(ident)
    assert client.welcome is not None
    sid = client.welcome.b["session_id"]
    # the client stops reading: websockets buffers 16 messages, then TCP fills up
    blob = "x" * (256 * 1024)
    for _ in range(80):  # 20 MiB of cmd.deliver: more than both sockets' buffers hold
        await submit(api, ident.node_id, args={"argv": ["echo", blob]})

    async def closed() -> dict[str, Any] | None:
        with contextlib.suppress(TimeoutError):  # heartbeats, as a live node would send
            async with asyncio.timeout(0.5):
                await client.ws.send(encode_msgpack(Frame(t="edge.heartbeat", id="hb",
                                                          b={"uptime_s": 1})))
        s = {x["session_id"]: x for x in await sessions(api, ident.node_id)}[sid]
        return s if s["closed_at"] is not None else None

    record = await eventually(closed, timeout_s=30, what="the stalled session closed")
    assert record["close_code"] == 4408
    assert "not reading" in record["reason"], record


async def test_an_unknown_frame_type_gets_an_unknown_type_error_and_the_session_stays_open(
        edge: Edge, enroll: Enroll) -> None:
    client = await edge.session(await enroll())
    await client.send(Frame(t="x.never.heard.of", id="odd-1", b={"a": 1}))
    err = await client.recv()
    assert err.t == "error"
    assert err.re == "odd-1"
    assert err.b["code"] == "unknown_type"
    assert isinstance(err.b["message"], str) and err.b["message"]
    await client.heartbeat("hb-after-error")


async def test_a_malformed_unsequenced_frame_gets_a_bad_frame_error_and_the_session_stays_open(
        edge: Edge, enroll: Enroll) -> None:
    client = await edge.session(await enroll())
    # (a malformed cursor, as in edge.ack {"acks": "everything"}, is 4400 instead:
    # test_cursor_values.py)
    await client.send(Frame(t="node.resources", id="bad-res", b={"cpus": "everything"}))
    err = await client.recv_type("error")
    assert err.re == "bad-res"
    assert err.b["code"] == "bad_frame"
    await client.heartbeat()


async def test_a_node_sending_a_controller_only_frame_is_closed_with_4400(
        edge: Edge, enroll: Enroll) -> None:
    client = await edge.session(await enroll())
    await client.send(Frame(t="edge.welcome", b={"session_id": "x", "resumed": False,
                                                 "epoch": 1, "acks": {}}))
    assert (await client.expect_close()).code == 4400


async def test_undecodable_bytes_after_the_welcome_are_closed_with_4400(
        edge: Edge, enroll: Enroll) -> None:
    client = await edge.session(await enroll())
    await client.send_raw(b"\x93\x01")  # a 3-element array cut short
    assert (await client.expect_close()).code == 4400


# -- one live session per node ---------------------------------------------------------

async def test_a_second_session_supersedes_the_first_which_is_closed_with_4409(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    first = await edge.session(ident)
    assert first.welcome is not None
    old_sid = first.welcome.b["session_id"]
    second = await edge.session(ident)
    assert second.welcome is not None
    new_sid = second.welcome.b["session_id"]
    closed = await first.expect_close()
    assert closed.code == 4409

    async def old_recorded() -> dict[str, Any] | None:
        by_id = {s["session_id"]: s for s in await sessions(api, ident.node_id)}
        old = by_id.get(old_sid)
        return old if old and old["closed_at"] is not None else None

    old = await eventually(old_recorded, what="superseded session recorded")
    assert old["close_code"] == 4409
    assert old["reason"] == "superseded"
    current = {s["session_id"]: s for s in await sessions(api, ident.node_id)}[new_sid]
    assert current["closed_at"] is None
    node = (await api.get(f"/api/v1/nodes/{ident.node_id}")).json()
    assert node["session"]["session_id"] == new_sid
    assert node["liveness"] == "online"
    await second.heartbeat()


async def test_a_disabled_node_is_closed_with_4403_and_refused_until_enabled(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/disable")
    assert resp.status_code == 200, resp.text
    assert resp.json()["enabled"] is False
    assert (await client.expect_close()).code == 4403

    again = await edge.open()
    await again.send(again.hello(ident))
    refused = await again.expect_close()
    assert refused.code == 4403
    assert refused.frames == []

    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/enable")
    assert resp.status_code == 200, resp.text
    assert resp.json()["enabled"] is True
    back = await edge.session(ident)
    await back.heartbeat()


async def test_a_disabled_node_with_a_bad_signature_still_gets_4401(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/disable")
    assert resp.status_code == 200, resp.text
    client = await edge.open()
    await client.send(client.hello(ident, sign_nonce=bytes(32)))
    assert (await client.expect_close()).code == 4401


# -- the evt stream (node -> controller, class A) -----------------------------------------

async def test_a_cmd_status_is_acked_duplicates_are_not_reapplied_and_gaps_are_refused(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)

    await client.send(status(1, command_id, "running", started_ms=1))
    ack = await client.recv_type("edge.ack")
    assert ack.b["acks"] == {"evt": 1}
    assert (await command(api, command_id))["state"] == "running"

    await client.send(status(1, command_id, "running", started_ms=1))  # duplicate
    dup_ack = await client.recv_type("edge.ack")
    assert dup_ack.b["acks"] == {"evt": 1}

    await client.send(status(3, command_id, "succeeded", exit_code=0))  # gap: 2 is missing
    gap_ack = await client.recv_type("edge.ack")
    assert gap_ack.b["acks"] == {"evt": 1}

    # a heartbeat round trip: everything sent before it has been handled
    hb = await client.heartbeat()
    assert hb.b["acks"] == {"evt": 1}
    cmd = await command(api, command_id)
    assert cmd["state"] == "running"
    states = [e["state"] for e in cmd["timeline"]]
    assert states == ["queued", "delivered", "running"], cmd["timeline"]


async def test_a_late_status_for_a_terminal_command_is_recorded_and_ignored(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    await client.send(status(1, command_id, "succeeded", exit_code=0, finished_ms=5))
    assert (await client.recv_type("edge.ack")).b["acks"] == {"evt": 1}
    await client.send(status(2, command_id, "failed", exit_code=3, error="late"))
    assert (await client.recv_type("edge.ack")).b["acks"] == {"evt": 2}
    cmd = await command(api, command_id)
    assert cmd["state"] == "succeeded"
    assert cmd["exit_code"] == 0
    assert [e["state"] for e in cmd["timeline"]] == ["queued", "delivered", "succeeded",
                                                     "failed"]


async def test_a_node_cannot_change_the_state_of_another_nodes_command(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    owner, intruder = await enroll(), await enroll()
    owner_client = await edge.session(owner)
    command_id, _ = await delivered_command(api, owner_client, owner.node_id)
    client = await edge.session(intruder)
    await client.send(status(1, command_id, "failed", exit_code=1))
    assert (await client.recv_type("edge.ack")).b["acks"] == {"evt": 1}
    cmd = await command(api, command_id)
    assert cmd["state"] == "delivered"
    assert [e["state"] for e in cmd["timeline"]] == ["queued", "delivered"]


async def test_the_evt_cursor_survives_a_reconnect_with_the_same_epoch(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident, epoch=1234)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    await client.send(status(1, command_id, "running"))
    assert (await client.recv_type("edge.ack")).b["acks"] == {"evt": 1}
    await client.close()

    again = await edge.session(ident, epoch=1234)
    assert again.welcome is not None
    assert again.welcome.b["acks"]["evt"] == 1
    await again.send(status(2, command_id, "succeeded", exit_code=0))
    assert (await again.recv_type("edge.ack")).b["acks"] == {"evt": 2}
    assert (await command(api, command_id))["state"] == "succeeded"


async def test_a_new_node_epoch_resets_the_evt_cursor_and_records_an_event(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident, epoch=1111)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    await client.send(status(1, command_id, "running"))
    assert (await client.recv_type("edge.ack")).b["acks"] == {"evt": 1}
    await client.close()

    again = await edge.session(ident, epoch=2222)
    assert again.welcome is not None
    assert again.welcome.b["acks"]["evt"] == 0
    await again.send(status(1, command_id, "succeeded", exit_code=0))
    assert (await again.recv_type("edge.ack")).b["acks"] == {"evt": 1}
    assert (await command(api, command_id))["state"] == "succeeded"
    events = (await api.get(f"/api/v1/nodes/{ident.node_id}/events")).json()["items"]
    resets = [e for e in events if e["kind"] == "stream.epoch_reset"
              and e["data"].get("stream") == "evt"]
    assert len(resets) == 1, events
    assert resets[0]["data"]["old"] == 1111 and resets[0]["data"]["new"] == 2222


async def test_an_evt_frame_with_a_repeated_idempotency_key_is_applied_once(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    """PROTOCOL.md §2: the receiver applies a given `k` at most once per node."""
    ident = await enroll()
    client = await edge.session(ident)
    for q in (1, 2):
        await client.send(Frame(t="node.event", s="evt", q=q, k="evt-key-1", id=f"ev-{q}",
                                b={"kind": "door.opened", "data": {"n": 1}}))
        assert (await client.recv_type("edge.ack")).b["acks"] == {"evt": q}
    events = (await api.get(f"/api/v1/nodes/{ident.node_id}/events")).json()["items"]
    opened = [e for e in events if e["kind"] == "door.opened"]
    assert len(opened) == 1, events


async def test_a_cmd_status_without_a_sequence_is_closed_with_4400(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    await client.send(Frame(t="cmd.status", b={"command_id": command_id, "state": "running"}))
    assert (await client.expect_close()).code == 4400


# -- goodbye -----------------------------------------------------------------------------

async def test_a_goodbye_closes_with_1000_and_the_node_is_offline_at_once(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    assert client.welcome is not None
    sid = client.welcome.b["session_id"]
    assert await liveness(api, ident.node_id) == "online"
    await client.send(Frame(t="edge.goodbye", b={"reason": "shutting down"}))
    closed = await client.expect_close()
    assert closed.code == 1000
    assert await liveness(api, ident.node_id) == "offline"

    async def recorded() -> dict[str, Any] | None:
        s = {x["session_id"]: x for x in await sessions(api, ident.node_id)}[sid]
        return s if s["closed_at"] is not None else None

    session = await eventually(recorded, what="goodbye session recorded")
    assert session["close_code"] == 1000
    assert session["reason"] == "goodbye"
    assert await liveness(api, ident.node_id) == "offline"


async def test_a_detached_runtime_makes_the_node_degraded_until_it_attaches(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    assert await liveness(api, ident.node_id) == "online"
    await client.send(Frame(t="edge.runtime", b={"state": "detached"}))
    await eventually(lambda: _liveness_is(api, ident.node_id, "degraded"), timeout_s=2,
                     what="degraded")
    await client.send(Frame(t="edge.runtime", b={"state": "attached"}))
    await eventually(lambda: _liveness_is(api, ident.node_id, "online"), timeout_s=2,
                     what="online again")


async def test_a_dropped_connection_without_goodbye_leaves_the_node_stale(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.close()
    await eventually(lambda: _liveness_is(api, ident.node_id, "stale"), timeout_s=2.5,
                     what="node stale after a close without goodbye")


async def _liveness_is(api: httpx.AsyncClient, node_id: str, value: str) -> bool:
    return await liveness(api, node_id) == value


async def test_a_status_sent_right_before_a_goodbye_is_applied_and_acked_before_the_close(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    """The controller flushes the evt frames it received before a goodbye (gateway
    ``_flush_evt``: "apply what was accepted before a goodbye, so the ack can go out before
    closing"). Several rounds, because the frame may be mid-commit when the goodbye is read."""
    for _ in range(10):
        ident = await enroll()
        client = await edge.session(ident)
        command_id, _ = await delivered_command(api, client, ident.node_id)
        await client.send(status(1, command_id, "succeeded", exit_code=0))
        await client.send(Frame(t="edge.goodbye", b={"reason": "done"}))
        closed = await client.expect_close()
        assert closed.code == 1000
        acks = [f.b["acks"] for f in closed.frames if f.t == "edge.ack"]
        assert {"evt": 1} in acks, f"status not acked before the goodbye close: {closed}"
        assert (await command(api, command_id))["state"] == "succeeded"


# -- logs (class C) -------------------------------------------------------------------------

async def test_log_chunks_are_stored_and_served_in_order(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    for seq, text in enumerate((b"hello ", b"world\n"), start=1):
        await client.send(Frame(t="log.chunk", b={
            "command_id": command_id, "source": "stdout", "seq": seq, "data": text,
            "dropped": 0}))
    await client.send(status(1, command_id, "succeeded", exit_code=0))
    assert (await client.recv_type("edge.ack")).b["acks"] == {"evt": 1}
    resp = await api.get(f"/api/v1/commands/{command_id}/logs")
    assert resp.status_code == 200
    body = resp.json()
    assert [(i["source"], i["seq"], i["data"]) for i in body["items"]] == [
        ("stdout", 1, "hello "), ("stdout", 2, "world\n")]
    assert body["next_after"] == body["items"][-1]["id"]
    after = await api.get(f"/api/v1/commands/{command_id}/logs",
                          params={"after": str(body["items"][0]["id"])})
    assert [i["seq"] for i in after.json()["items"]] == [2]


# -- the cmd stream (controller -> node, class A) -------------------------------------------

async def test_a_command_is_pushed_at_once_and_delivered_when_the_node_acks_it(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    cmd = await submit(api, ident.node_id, "exec", {"argv": ["echo", "hi"]}, ttl_s=60)
    assert cmd["state"] == "queued"
    deliver = await client.recv_type("cmd.deliver", timeout_s=2)
    assert deliver.s == "cmd" and deliver.q == 1
    b = deliver.b
    assert b["command_id"] == cmd["command_id"]
    assert b["kind"] == "exec"
    assert b["args"] == {"argv": ["echo", "hi"]}
    assert isinstance(b["created_ms"], int)
    assert isinstance(b["deadline_ms"], int) and b["deadline_ms"] > b["created_ms"]
    assert (await command(api, cmd["command_id"]))["state"] == "queued"

    await client.send(Frame(t="edge.ack", b={"acks": {"cmd": deliver.q}}))
    done = await eventually(lambda: _state_is(api, cmd["command_id"], "delivered"),
                            timeout_s=5, what="command delivered")
    assert done
    timeline = (await command(api, cmd["command_id"]))["timeline"]
    assert [e["state"] for e in timeline] == ["queued", "delivered"]


async def test_a_command_without_a_deadline_is_delivered_with_a_nil_deadline(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    cmd = await submit(api, ident.node_id, "diag.ping", {})
    deliver = await client.recv_type("cmd.deliver")
    assert deliver.b["command_id"] == cmd["command_id"]
    assert "deadline_ms" in deliver.b and deliver.b["deadline_ms"] is None


async def test_an_unacked_command_is_sent_again_on_the_next_session(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    cmd = await submit(api, ident.node_id)
    first = await client.recv_type("cmd.deliver")
    await client.close()
    again = await edge.session(ident, acks={"cmd": 0})
    replay = await again.recv_type("cmd.deliver")
    assert replay.q == first.q
    assert replay.b["command_id"] == cmd["command_id"]


async def test_edge_resume_makes_the_controller_resend_after_the_given_sequence(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    first = await submit(api, ident.node_id)
    second = await submit(api, ident.node_id)
    d1 = await client.recv_type("cmd.deliver")
    d2 = await client.recv_type("cmd.deliver")
    assert (d1.q, d2.q) == (1, 2)
    assert d1.b["command_id"] == first["command_id"]
    assert d2.b["command_id"] == second["command_id"]
    await client.send(Frame(t="edge.resume", b={"acks": {"cmd": 1}}))
    again = await client.recv_type("cmd.deliver")
    assert again.q == 2 and again.b["command_id"] == second["command_id"]
    await eventually(lambda: _state_is(api, first["command_id"], "delivered"),
                     what="resume ack marks q=1 delivered")
    assert (await command(api, second["command_id"]))["state"] == "queued"


async def test_an_impossible_cmd_ack_in_the_hello_starts_a_new_cmd_epoch(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    first = await edge.session(ident)
    assert first.welcome is not None
    old_epoch = first.welcome.b["epoch"]
    await first.close()
    cmd = await submit(api, ident.node_id)
    client = await edge.session(ident, acks={"cmd": 5})  # nothing was ever sent
    assert client.welcome is not None
    assert client.welcome.b["epoch"] != old_epoch
    deliver = await client.recv_type("cmd.deliver")
    assert deliver.q == 1 and deliver.b["command_id"] == cmd["command_id"]
    events = (await api.get(f"/api/v1/nodes/{ident.node_id}/events")).json()["items"]
    assert any(e["kind"] == "stream.epoch_reset" and e["data"]["stream"] == "cmd"
               for e in events), events


async def test_a_command_queued_while_offline_is_pushed_right_after_the_welcome(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    cmd = await submit(api, ident.node_id)
    client = await edge.session(ident)
    deliver = await client.recv_type("cmd.deliver", timeout_s=2)
    assert deliver.b["command_id"] == cmd["command_id"]
    assert deliver.q == 1


async def test_cancelling_a_delivered_command_pushes_a_cancel_command(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, q = await delivered_command(api, client, ident.node_id)
    resp = await api.post(f"/api/v1/commands/{command_id}/cancel")
    assert resp.status_code == 202, resp.text
    cancel = await client.recv_type("cmd.deliver")
    assert cancel.q == q + 1
    assert cancel.b["kind"] == "cancel"
    assert cancel.b["args"] == {"command_id": command_id}

"""The node's side of the controller's relay (node/rtc/relay.py), two RelayManagers wired
back to back through a stand-in for the controller (it stamps ``from`` and drops ``to``,
as services/rtc.py does), so the windowed stream, the grants and the file subflow over it
are tested without sockets. The real relay, end to end: tests/e2e/test_cp.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tether.node.rtc.relay import RelayManager
from tether.protocol.frames import Frame
from tether.protocol.rtc import RtcLink, RtcRelay

PSID = "link-1"


class Wire:
    """The controller in between: routes each node's frames to the other, ``from``
    stamped; ``drop`` decides (per relay data frame) whether it is lost on the way."""

    def __init__(self) -> None:
        self.nodes: dict[str, RelayManager] = {}
        self.errors: list[tuple[str, Frame]] = []
        self.drop: Callable[[RtcRelay], bool] = lambda body: False
        self.tasks: set[asyncio.Task[None]] = set()

    def sender(self, node_id: str) -> Callable[[Frame], asyncio.Future[bool]]:
        async def send(frame: Frame) -> bool:
            if frame.t == "error":
                self.errors.append((node_id, frame))
                return True
            if frame.t != "rtc.relay":
                return True
            body = RtcRelay.from_body(frame.b)
            if body.seq and self.drop(body):
                return True
            to = (body.to or "").removeprefix("node:")
            out = Frame(t="rtc.relay", b={**frame.b, "from": f"node:{node_id}"})
            out.b.pop("to", None)
            task = asyncio.ensure_future(self.nodes[to].receive(out))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return True
        return send  # type: ignore[return-value]


def grant(manager: RelayManager, other: str, node_end: str) -> None:
    manager.on_link(RtcLink(node_id=node_end, peer_session_id=PSID, from_=f"node:{other}",
                            expires_at_ms=1 << 50).frame())


@contextlib.asynccontextmanager
async def pair(tmp_path: Path, *, grants: bool = True) -> AsyncIterator[tuple[
        Wire, RelayManager, RelayManager]]:
    wire = Wire()
    a = RelayManager(node_id="a", send=wire.sender("a"), workspace_dir=tmp_path / "a")
    b = RelayManager(node_id="b", send=wire.sender("b"), workspace_dir=tmp_path / "b")
    wire.nodes = {"a": a, "b": b}
    if grants:
        grant(a, "b", "b")
        grant(b, "a", "b")
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    await a.ready.wait()
    await b.ready.wait()
    try:
        yield wire, a, b
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *wire.tasks, return_exceptions=True)


def source(tmp_path: Path, size: int) -> tuple[Path, str]:
    data = os.urandom(size)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


async def test_a_file_crosses_the_relay_verified_and_the_node_end_serves_it(
        tmp_path: Path) -> None:
    path, digest = source(tmp_path, (3 << 20) + 123)
    async with pair(tmp_path) as (wire, a, b):
        endpoint = a.open(PSID)
        async with asyncio.timeout(30):
            result = await endpoint.send_file(path, name="copy.bin")
        assert result.ok and result.sha256 == digest
        assert hashlib.sha256((tmp_path / "b" / "copy.bin").read_bytes()).hexdigest() \
            == digest
        assert not wire.errors
        # the opener serves nothing: the node end cannot fetch the opener's files
        assert a.channels[PSID].endpoint is endpoint and not endpoint.serve
        assert b.channels[PSID].endpoint is not None and b.channels[PSID].endpoint.serve


async def test_lost_relay_frames_are_sent_again_and_the_file_still_arrives(
        tmp_path: Path) -> None:
    path, digest = source(tmp_path, 1 << 20)
    dropped: set[int] = set()

    def drop_once(body: RtcRelay) -> bool:  # every 7th data frame is lost once
        if body.seq % 7 == 0 and body.seq not in dropped:
            dropped.add(body.seq)
            return True
        return False

    async with pair(tmp_path) as (wire, a, _b):
        wire.drop = drop_once
        async with asyncio.timeout(60):
            result = await a.open(PSID).send_file(path)
        assert result.ok and result.sha256 == digest and dropped
        assert a.channels[PSID].resent_total >= 1


@pytest.mark.parametrize("body", [
    {"node_id": "b", "peer_session_id": PSID, "from": "node:a", "seq": 1, "data": b"{}"},
    {"node_id": "b", "peer_session_id": "other", "from": "node:a", "seq": 1, "data": b"x"},
    {"node_id": "a", "peer_session_id": PSID, "from": "node:a", "seq": 1, "data": b"x"},
])
async def test_relay_frames_without_a_matching_grant_are_refused(
        tmp_path: Path, body: dict[str, object]) -> None:
    async with pair(tmp_path, grants=False) as (wire, _a, b):
        if body["peer_session_id"] == "other" or body["node_id"] == "a":
            grant(b, "a", "b")  # a grant, but not for this peer or node end
        await b.receive(Frame(t="rtc.relay", id="r1", b=body))
        (sender, error), = wire.errors
        assert (sender, error.re, error.b["code"], error.b["to"]) == ("b", "r1", "forbidden",
                                                                        "node:a")
        assert not b.channels and b.refused_total == 1
        assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())


async def test_a_relay_frame_from_another_node_than_the_granted_one_is_refused(
        tmp_path: Path) -> None:
    async with pair(tmp_path) as (wire, _a, b):
        await b.receive(Frame(t="rtc.relay", id="r2", b={
            "node_id": "b", "peer_session_id": PSID, "from": "node:mallory", "seq": 1,
            "data": b"{}"}))
        assert [e.b["code"] for _, e in wire.errors] == ["forbidden"]
        assert not b.channels


@pytest.mark.parametrize("body", [
    {"node_id": "b", "peer_session_id": PSID, "from": "node:a", "seq": 1,
     "data": b"x" * ((60 << 10) + 1)},
    {"node_id": "b", "peer_session_id": PSID, "from": "node:a"},
    {"node_id": "b", "peer_session_id": PSID, "from": "node:a", "ack": 1, "window": 1 << 30},
    {"node_id": "b", "peer_session_id": PSID, "from": "node:a", "seq": True, "data": b"x"},
])
async def test_hostile_relay_bodies_get_bad_frame(tmp_path: Path,
                                                  body: dict[str, object]) -> None:
    async with pair(tmp_path) as (wire, _a, b):
        await b.receive(Frame(t="rtc.relay", id="h", b=body))
        assert [e.b["code"] for _, e in wire.errors] == ["bad_frame"]
        assert not b.channels


async def test_a_relay_past_the_grants_bound_forgets_the_oldest(tmp_path: Path) -> None:
    async with pair(tmp_path, grants=False) as (_wire, _a, b):
        for i in range(20):
            b.on_link(RtcLink(node_id="b", peer_session_id=f"p{i}", from_="node:a",
                              expires_at_ms=1 << 50).frame())
        assert list(b.grants) == [f"p{i}" for i in range(4, 20)]

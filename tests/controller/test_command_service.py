"""CommandService over the real SQLite store, with a router and a bus that record what they
are asked: the write comes first, then the nudge, then the event; a refused control nudges
nobody."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tether.controller.app import Controller, build, start, stop
from tether.controller.config import ControllerConfig
from tether.controller.services.commands import CommandService
from tether.controller.services.presence import SessionSnapshot
from tether.controller.store.records import CommandRecord
from tether.protocol.errors import Conflict, NotFound
from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key, public_key_raw


@dataclass
class RecordingRouter:
    nudged: list[str] = field(default_factory=list)

    def nudge(self, node_id: str) -> None:
        self.nudged.append(node_id)

    async def send(self, node_id: str, frame: Frame) -> bool:
        raise AssertionError("the command service never sends frames itself")

    async def disable(self, node_id: str) -> bool:
        raise AssertionError("the command service never disables nodes")

    async def supersede(self, node_id: str, session_id: str) -> bool:
        raise AssertionError("the command service never supersedes sessions")


@dataclass
class RecordingBus:
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def publish(self, topic: str, kind: str, data: dict[str, Any], *,
                size: int | None = None) -> None:
        self.events.append((topic, kind, data))


@dataclass
class NoSessions:
    def snapshot(self, node_id: str) -> SessionSnapshot | None:
        return None

    def __len__(self) -> int:
        return 0


@dataclass
class Fixture:
    ctl: Controller
    service: CommandService
    router: RecordingRouter
    bus: RecordingBus
    node_id: str = "n-1"


@pytest.fixture
async def fx(tmp_path: Path) -> AsyncIterator[Fixture]:
    ctl = build(ControllerConfig(data_dir=tmp_path / "ctl", durability="process"))
    sweeper = await start(ctl)
    try:
        token, _ = await ctl.store.create_join_token(ttl_s=60, uses=1, labels={},
                                                     actor="admin")
        await ctl.store.enroll(join_token=token, node_id="n-1",
                               public_key=public_key_raw(generate_private_key()), labels={})
        router, bus = RecordingRouter(), RecordingBus()
        service = CommandService(ctl.store, router, bus, presence=NoSessions(),
                                 liveness=lambda node_id: "offline",
                                 max_frame_bytes=ctl.config.max_frame_bytes)
        yield Fixture(ctl, service, router, bus)
    finally:
        await stop(ctl, sweeper)


async def submit(fx: Fixture, **kw: Any) -> tuple[CommandRecord, bool]:
    args: dict[str, Any] = {"kind": "diag.ping", "args": {}, "ttl_s": None,
                            "idem_key": None, "actor": "admin", **kw}
    return await fx.service.submit(fx.node_id, **args)


async def test_a_submitted_command_is_stored_then_its_node_nudged_then_published(
        fx: Fixture) -> None:
    command, created = await submit(fx)
    assert created and command.state == "queued"
    assert (await fx.service.get(command.command_id)).state == "queued"  # stored
    assert fx.router.nudged == [fx.node_id]
    assert fx.bus.events == [
        (f"command:{command.command_id}", "command.updated",
         {"command_id": command.command_id, "node_id": fx.node_id, "state": "queued"}),
        (f"commands:{fx.node_id}", "command.updated",
         {"command_id": command.command_id, "node_id": fx.node_id, "state": "queued"})]


async def test_a_repeated_idempotency_key_returns_the_command_and_nudges_nobody(
        fx: Fixture) -> None:
    first, _ = await submit(fx, idem_key="k1")
    fx.router.nudged.clear()
    fx.bus.events.clear()
    again, created = await submit(fx, idem_key="k1")
    assert not created and again.command_id == first.command_id
    assert fx.router.nudged == [] and fx.bus.events == []


async def test_a_command_for_an_unknown_node_is_refused_and_nudges_nobody(
        fx: Fixture) -> None:
    with pytest.raises(NotFound):
        await fx.service.submit("n-nobody", kind="diag.ping", args={}, ttl_s=None,
                                idem_key=None, actor="admin")
    assert fx.router.nudged == [] and fx.bus.events == []


async def test_offline_fail_refuses_a_node_that_is_not_online_and_stores_nothing(
        fx: Fixture) -> None:
    with pytest.raises(Conflict) as refused:
        await submit(fx, offline="fail")
    assert refused.value.code == "node_offline" and refused.value.http_status == 409
    items, counts = await fx.service.list_commands(node_id=fx.node_id, state=None, limit=10)
    assert items == [] and counts == {}
    assert fx.router.nudged == [] and fx.bus.events == []


async def test_cancelling_a_command_not_yet_sent_publishes_it_cancelled_without_a_nudge(
        fx: Fixture) -> None:
    command, _ = await submit(fx)
    fx.router.nudged.clear()
    fx.bus.events.clear()
    row = await fx.service.control(command.command_id, "cancel", actor="admin")
    assert row.state == "cancelled"
    assert fx.router.nudged == []
    assert (f"command:{command.command_id}", "command.updated",
            {"command_id": command.command_id, "node_id": fx.node_id,
             "state": "cancelled"}) in fx.bus.events


async def test_control_of_a_terminal_command_is_a_409_and_nudges_nobody(
        fx: Fixture) -> None:
    command, _ = await submit(fx)
    await fx.service.control(command.command_id, "cancel", actor="admin")
    fx.router.nudged.clear()
    fx.bus.events.clear()
    for action in ("cancel", "pause", "resume"):
        with pytest.raises(Conflict) as refused:
            await fx.service.control(command.command_id, action, actor="admin")
        assert refused.value.code == "command_terminal"
        assert refused.value.http_status == 409
    assert fx.router.nudged == [] and fx.bus.events == []


async def test_the_logs_of_an_unknown_command_are_a_404_unless_asked_leniently(
        fx: Fixture) -> None:
    with pytest.raises(NotFound):
        await fx.service.logs("c_nope", after=0, limit=10, max_bytes=None)
    page = await fx.service.logs("c_nope", after=0, limit=10, max_bytes=None,
                                 must_exist=False)
    assert list(page) == []

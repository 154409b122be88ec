"""A controller and one real node with the history recorder armed in every process, traffic
that leaves a marker per execution, and the end of a run: drain, stop, audit, check.

Shared by the failpoint crash tests and the power-loss tests (tests/soak/). Every wait is a
condition with a deadline (tests/helpers.py ``wait_until``).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.common import failpoints
from tether.protocol.frames import TERMINAL_STATES
from tether.tools.soak import recorder
from tether.tools.soak.checker import Violation, check
from tether.tools.soak.history import (
    CmdState,
    CmdSubmit,
    Drained,
    HistoryWriter,
    Marker,
    Record,
    load,
)

from ..helpers import FAST, Api, ControllerProc, NodeProc, Proc, tether_cmd, wait_until

NODE_ID = "crash-n1"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@dataclass
class Rig:
    """One controller, one node, a history directory all of them write into."""

    root: Path
    controller_extra: list[str] = field(default_factory=list)
    node_extra: list[str] = field(default_factory=list)
    controller_env: dict[str, str] = field(default_factory=dict)
    node_env: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)  # command_id -> tag
    controller: ControllerProc = field(init=False)
    node: NodeProc = field(init=False)
    api: Api = field(init=False)

    def __post_init__(self) -> None:
        self.history = self.root / "history"
        self.history.mkdir(parents=True, exist_ok=True)
        self.markers = self.root / "markers.txt"
        self.controller = ControllerProc(self.root / "controller",
                                         extra=[*FAST, *self.controller_extra])
        self.node = NodeProc(self.root / NODE_ID, NODE_ID,
                             extra=self.node_extra)

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        # the parent's TETHER_FAILPOINTS (if any) never leaks into a child unasked
        return {recorder.ENV_VAR: str(self.history), failpoints.ENV_VAR: "", **extra}

    # -- processes ------------------------------------------------------------------------

    def start_controller(self, *, armed: bool = True) -> None:
        self.controller.env = self._env(self.controller_env if armed else {})
        self.controller.start()
        self.api = self.controller.api()

    def start_controller_to_crash(self) -> int:
        """Start the controller armed, expecting it to die before it listens (a failpoint
        on its way up); returns its exit code."""
        ctl = self.controller
        ctl.env = self._env(self.controller_env)
        ctl.argv = tether_cmd("controller", "serve", "--data-dir", str(ctl.data_dir),
                              "--port", str(ctl.port), *ctl.extra)
        Proc.start(ctl)
        wait_until(lambda: not ctl.alive(), timeout_s=30, what="the controller to crash")
        assert ctl.proc is not None
        return ctl.proc.wait(10)

    def enroll(self) -> None:
        self.node.enroll(self.controller)

    def start_node(self, *, armed: bool = True) -> None:
        self.node.env = self._env(self.node_env if armed else {})
        self.node.start()

    def wait_online(self) -> None:
        wait_until(lambda: self.api.liveness(NODE_ID) == "online", timeout_s=30,
                   what=f"{NODE_ID} online")

    def kill_node(self) -> None:
        """kill -9 of the runtime and its sidecar (a crashed one is only reaped)."""
        sidecar = self.node.sidecar_pid()
        if self.node.alive():
            self.node.kill9()
        elif self.node.proc is not None:
            self.node.proc.wait(timeout=10)
        if sidecar is not None and _pid_alive(sidecar):
            os.kill(sidecar, signal.SIGKILL)
            wait_until(lambda: not _pid_alive(sidecar), what="sidecar gone")

    def stop(self) -> None:
        self.node.cleanup()
        if self.controller.alive():
            self.controller.terminate()

    # -- traffic ----------------------------------------------------------------------------

    def submit(self) -> str:
        tag = f"t{len(self.commands)}"
        body = {"kind": "exec", "args": {"argv": ["sh", "-c", f"echo {tag} >> {self.markers}"]}}
        resp = self.api.post(f"/api/v1/nodes/{NODE_ID}/commands", json=body,
                             headers={"Idempotency-Key": tag})
        assert resp.status_code in (200, 202), resp.text
        command_id = str(resp.json()["command_id"])
        self.commands[command_id] = tag
        return command_id

    def state(self, command_id: str) -> str:
        return str(self.api.command(command_id)["state"])

    def all_terminal(self) -> bool:
        return all(self.state(c) in TERMINAL_STATES for c in self.commands)

    def outbox_drained(self) -> bool:
        try:
            status = json.loads((self.node.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return False
        outbox = status.get("outbox") or {}
        return bool(outbox.get("depth") == 0 and outbox.get("acked") == outbox.get("last")
                    and status.get("pid") == self.node.pid)

    def drain(self, *, timeout_s: float = 30) -> None:
        """Every process up, the node online, every command terminal, the node's outbox
        empty (every evt frame acked), then both stopped cleanly."""
        self.wait_online()
        wait_until(self.all_terminal, timeout_s=timeout_s, what="every command terminal")
        wait_until(self.outbox_drained, timeout_s=timeout_s, what="the node's outbox empty")

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> tuple[list[Violation], list[Record], dict[str, str]]:
        """Drain, record what the operator saw (submits, final states, markers, drained),
        stop everything, check the merged history. Returns (violations, records, states)."""
        self.drain()
        states = {c: self.state(c) for c in self.commands}
        tags = {tag: c for c, tag in self.commands.items()}
        writer = HistoryWriter(self.history / "test.jsonl")
        for command_id in self.commands:
            writer.write(CmdSubmit(command_id=command_id, node=NODE_ID))
            writer.write(CmdState(command_id=command_id, state=states[command_id]))
        lines = self.markers.read_text().split() if self.markers.exists() else []
        for tag in lines:
            writer.write(Marker(command_id=tags[tag]))
        writer.write(Drained())
        writer.close()
        self.stop()
        records = load(*sorted(self.history.glob("*.jsonl")))
        return check(records), records, states


def kinds(records: list[Record]) -> dict[tuple[str, str], int]:
    """(ev, stream) -> count, to show a history is not empty of what it must hold."""
    out: dict[tuple[str, str], int] = {}
    for record in records:
        key = (record.ev, str(getattr(record, "stream", "")))
        out[key] = out.get(key, 0) + 1
    return out


def iter_logs(rig: Rig) -> Iterator[str]:
    yield rig.controller.log()
    yield rig.node.log()
    sidecar_log = rig.node.state_dir / "sidecar.log"
    if sidecar_log.exists():
        yield sidecar_log.read_text(errors="replace")


def crashed_at(rig: Rig, point: str) -> bool:
    """The failpoint's own line (common/failpoints.py) is in some process's log."""
    return any(f"failpoint {point}: crash" in text for text in iter_logs(rig))


def summary(rig: Rig, violations: list[Violation], extra: Any = None) -> str:
    return "\n".join([*(v.to_json() for v in violations[:20]), str(extra or ""),
                      rig.controller.log()[-3000:], rig.node.log()[-3000:]])

"""Simulated power loss of a whole single-controller system (tools/powerloss.py): the
controller's SQLite store and the node's store both run through the shim; after commands
ran, every process is killed with -9 and every write that was not fsynced is thrown away;
then everything restarts and drains (docs/reliability.md, "Power loss").

* ``--durability fsync``: nothing acked is lost. Every command the operator saw succeed is
  still ``succeeded`` afterwards (the checker reports a state that went back or changed), no
  command ran twice (markers), and every ``cmd`` frame the controller recorded as acked is
  still applied in the node's store (an ``effect`` audit of the node's commands table, so
  ``lost_acked`` judges the disk, not the history).
* ``--durability process``: the documented bound. Only commits since the last checkpoint
  are lost, which is only WAL content (the main files lose nothing), both stores stay
  consistent (``quick_check``), and the system comes back: the node online again and a new
  command run exactly once.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tether.tools import powerloss
from tether.tools.soak.history import CmdState, Effect, HistoryWriter

from ..helpers import wait_until
from .crashkit import NODE_ID, Rig, summary

pytestmark = pytest.mark.timeout(120)
COMMANDS = 6


def _shim_env(root: Path) -> dict[str, str]:
    return powerloss.child_env({"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                               root / "site")


def _rig(tmp_path: Path, durability: str) -> Rig:
    env = _shim_env(tmp_path)
    flags = ["--durability", durability]
    return Rig(tmp_path, controller_extra=flags, node_extra=flags,
               controller_env=env, node_env=env)


def _run_then_lose_power(rig: Rig) -> dict[str, str]:
    """Commands to the end, the states the operator saw, then kill -9 of every process and
    the power cut. Returns command_id -> state seen before the cut."""
    rig.start_controller()
    rig.enroll()
    rig.start_node()
    rig.wait_online()
    for _ in range(COMMANDS):
        rig.submit()
    wait_until(rig.all_terminal, timeout_s=30, what="every command terminal")
    wait_until(rig.outbox_drained, timeout_s=30, what="the node's outbox acked")
    seen = {c: rig.state(c) for c in rig.commands}
    rig.kill_node()
    rig.controller.kill9()
    rolled = powerloss.power_loss(rig.root)
    assert rig.node.state_dir / "node.db" in rolled
    assert rig.controller.data_dir / "controller.db" in rolled
    return seen


def _quick_check(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok", path
    finally:
        conn.close()


def _node_commands(rig: Rig) -> set[str]:
    conn = sqlite3.connect(rig.node.state_dir / "node.db")
    try:
        return {r[0] for r in conn.execute("SELECT command_id FROM commands")}
    finally:
        conn.close()


def test_with_fsync_durability_nothing_acked_is_lost_to_a_power_cut(tmp_path: Path) -> None:
    rig = _rig(tmp_path, "fsync")
    try:
        seen = _run_then_lose_power(rig)
        assert set(seen.values()) == {"succeeded"}
        writer = HistoryWriter(rig.history / "before-cut.jsonl")
        for command_id, state in seen.items():
            writer.write(CmdState(command_id=command_id, state=state))
        writer.close()
        rig.start_controller(armed=False)
        rig.start_node(armed=False)
        rig.submit()
        rig.drain()
        rig.node.terminate()
        held = _node_commands(rig)  # the node's store after the cut, before finish()
        rig.start_node(armed=False)
        audit = HistoryWriter(rig.history / "audit.jsonl")
        for command_id in rig.commands:
            audit.write(Effect(node=NODE_ID, stream="cmd", frame_id=command_id,
                               count=int(command_id in held)))
        audit.close()
        violations, _records, states = rig.finish()
    finally:
        rig.stop()
    assert violations == [], summary(rig, violations)
    assert set(states.values()) == {"succeeded"}
    assert set(rig.markers.read_text().split()) == set(rig.commands.values())


def _wal_only_loss(root: Path) -> dict[str, tuple[int, int]]:
    """Run power_loss() and measure it per file: (bytes before, bytes after)."""
    sizes = {p: p.stat().st_size for p in root.rglob("*.db*")
             if not p.name.endswith(powerloss.UNDO_SUFFIX) and p.is_file()}
    powerloss.power_loss(root)
    return {p.name + ":" + p.parent.name: (before, p.stat().st_size if p.exists() else 0)
            for p, before in sizes.items()}


def test_with_process_durability_the_loss_is_only_the_wal_since_the_last_checkpoint(
        tmp_path: Path) -> None:
    rig = _rig(tmp_path, "process")
    try:
        rig.start_controller()
        rig.enroll()
        rig.start_node()
        rig.wait_online()
        # a clean stop checkpoints: the enrollment and the first session reach the disk
        # (without it they are commits since the last checkpoint too, and the node, lost
        # with them, could never come back)
        rig.node.terminate()
        rig.controller.terminate()
        rig.start_controller()
        rig.start_node()
        rig.wait_online()
        for _ in range(COMMANDS):
            rig.submit()
        wait_until(rig.all_terminal, timeout_s=30, what="every command terminal")
        main_files = {p: p.read_bytes() for p in (rig.node.state_dir / "node.db",
                                                  rig.controller.data_dir / "controller.db")}
        rig.kill_node()
        rig.controller.kill9()
        sizes = _wal_only_loss(rig.root)
        for path, content in main_files.items():
            # synced only at a checkpoint: a commit since then never reached the main file
            assert path.read_bytes() == content, f"{path} changed: not only WAL was lost"
            _quick_check(path)
        wal_lost = {name: before - after for name, (before, after) in sizes.items()
                    if name.split(":")[0].endswith("-wal")}
        assert all(0 <= lost <= 4 * 1024 * 1024 + 64 * 1024 for lost in wal_lost.values())
        assert sum(wal_lost.values()) > 0, f"nothing unsynced to lose: {sizes}"
        rig.start_controller(armed=False)
        rig.start_node(armed=False)
        rig.wait_online()  # the epochs handle the rewind (docs/protocol.md §3 "Epochs")
        known = [c for c in rig.commands
                 if rig.api.get(f"/api/v1/commands/{c}").status_code == 200]
        assert len(known) < COMMANDS, "the controller lost no acked commit: nothing shown"
        before = len(rig.commands)
        command_id = rig.submit()
        assert len(rig.commands) == before + 1
        wait_until(lambda: rig.state(command_id) == "succeeded", timeout_s=30,
                   what="a command after the cut")
        tag = rig.commands[command_id]
        assert rig.markers.read_text().split().count(tag) == 1
    finally:
        rig.stop()

"""Runtime self-update under a supervisor, with real processes: a controller, a node run by
`tether node supervise`, its sidecar, and runtime bundles built from this source tree
(cli/bundle_runtime.py). The install path is node/selfupdate.py's ``SelfUpdate.install``,
driven here directly (the update.now handling of node/bundles.py calls the same method).

Left on SQLite only: the supervisor, the slots and the sidecar's heartbeat are the node's;
the controller only shows the heartbeat's `update` (its store plays no part).
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tether.cli.bundle import keygen, load_private_key
from tether.cli.bundle_runtime import build_runtime_bundle
from tether.common import __version__
from tether.common.procfile import read_pid
from tether.node import slots
from tether.node.selfupdate import SelfUpdate
from tether.protocol.bundle import read_bundle
from tether.protocol.frames import Frame
from tether.protocol.local import encode_local
from tether.protocol.selfupdate import UpdateRecord
from tether.protocol.update import BundleStatus, UpdateOffer

from ..helpers import Api, ControllerProc, NodeProc, tether_cmd, wait_until

NEW_VERSION = "0.1.0-rt.2"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "publisher.key"
    keygen(path)
    return path


def _supervised(make_node: Any, controller: ControllerProc, node_id: str,
                *flags: str) -> NodeProc:
    node: NodeProc = make_node(node_id, start=False)
    node.argv = tether_cmd("node", "supervise", "--state-dir", str(node.state_dir), *flags)
    node.start()
    api = controller.api()
    wait_until(lambda: api.liveness(node_id) == "online", what=f"{node_id} online")
    return node


def _install(node: NodeProc, bundle: Path) -> list[BundleStatus]:
    """SelfUpdate.install of ``bundle`` on ``node``'s state dir (what the runtime does once
    node/bundles.py checked it); returns what it reported (deferrals)."""
    reports: list[BundleStatus] = []

    async def report(status: BundleStatus) -> None:
        reports.append(status)

    async def finish(*args: Any) -> None:
        raise AssertionError("install never finishes the command itself")

    with bundle.open("rb") as f:
        manifest = read_bundle(f).manifest
    offer = UpdateOffer(name=manifest.name, version=manifest.version, kind="runtime",
                        sha256="0" * 64, size=bundle.stat().st_size)
    updater = SelfUpdate(state_dir=node.state_dir, supervised=True, report=report,
                         finish=finish, media=lambda: None)
    asyncio.run(updater.install(offer, manifest, bundle))
    return reports


def _decided(node: NodeProc, timeout_s: float = 60) -> UpdateRecord:
    def decided() -> UpdateRecord | None:
        record = slots.read_record(node.state_dir)
        return record if record is not None and record.outcome is not None else None
    return wait_until(decided, timeout_s=timeout_s, what="the update to be decided")


def _reported(node: NodeProc, record: UpdateRecord) -> bool:
    path = slots.reported_path(node.state_dir)
    return path.exists() and path.read_text() == record.request.update_id


def _watch_liveness(api: Api, node_id: str, node: NodeProc, seen: list[str],
                    stages: set[str]) -> bool:
    view = api.node(node_id)
    seen.append(view["liveness"])
    if view["runtime"].get("update"):
        stages.add(view["runtime"]["update"]["stage"])
    record = slots.read_record(node.state_dir)
    return record is not None and record.outcome is not None


def test_a_successful_self_update_keeps_the_session_and_the_node_reports_the_new_version(
        tmp_path: Path, controller: ControllerProc, make_node: Any, key: Path) -> None:
    node = _supervised(make_node, controller, "rt-ok")
    api = controller.api()
    before = api.node("rt-ok")
    assert before["runtime"]["version"] == __version__
    session = before["session"]
    bundle = tmp_path / "runtime-2.bundle"
    build_runtime_bundle(bundle, name="tether-runtime", version=2,
                         key=load_private_key(key), runtime_version=NEW_VERSION)

    assert _install(node, bundle) == []
    seen: list[str] = []
    stages: set[str] = set()
    wait_until(lambda: _watch_liveness(api, "rt-ok", node, seen, stages), timeout_s=60,
               what="the update to end")
    record = _decided(node)
    assert record.outcome == "promoted", record
    assert "updating" in seen and stages  # shown, with its stage, while it was replaced
    assert stages <= {"applying", "starting", "attaching", "readiness", "replay"}
    wait_until(lambda: api.node("rt-ok")["runtime"].get("version") == NEW_VERSION,
               what="the new runtime version")
    wait_until(lambda: api.liveness("rt-ok") == "online", what="online after the update")
    after = api.node("rt-ok")
    # the same session throughout: never closed, never resumed
    assert after["session"]["session_id"] == session["session_id"]
    assert after["session"]["opened_at"] == session["opened_at"]
    assert "update" not in after["runtime"]
    pointer = slots.read_pointer(node.state_dir)
    assert (pointer.slot, pointer.version, pointer.bundle_version) == ("a", NEW_VERSION, 2)
    wait_until(lambda: _reported(node, record), what="the promoted runtime to report")
    status = json.loads((node.state_dir / "status.json").read_text())
    assert status["version"] == NEW_VERSION


def test_a_candidate_that_crashes_at_start_restores_the_old_slot_with_recovery_metadata(
        tmp_path: Path, controller: ControllerProc, make_node: Any, key: Path) -> None:
    node = _supervised(make_node, controller, "rt-crash")
    api = controller.api()
    session_id = api.node("rt-crash")["session"]["session_id"]
    bundle = tmp_path / "runtime-crash.bundle"
    build_runtime_bundle(bundle, name="tether-runtime", version=2,
                         key=load_private_key(key), runtime_version=NEW_VERSION,
                         broken="crash")

    _install(node, bundle)
    record = _decided(node)
    assert record.outcome == "rolled_back", record
    assert record.failed_stage == "attaching"
    assert record.request.slot == "a" and record.previous.slot == "base"
    assert record.backup_path and Path(record.backup_path, "node", "runtime.py").is_file()
    assert any("broken on purpose" in line for line in record.log_tail), record.log_tail
    detail = record.recovery()
    assert detail["stage"] == "attaching" and detail["slot"] == "a"
    assert detail["backup_path"] == record.backup_path and detail["log_tail"]
    # the old runtime is back, on the same session, and reported the rollback
    wait_until(lambda: _reported(node, record), what="the restored runtime to report")
    wait_until(lambda: api.liveness("rt-crash") == "online", what="online again")
    view = api.node("rt-crash")
    assert view["session"]["session_id"] == session_id
    assert view["runtime"]["version"] == __version__
    assert slots.read_pointer(node.state_dir).slot == "base"


def test_a_candidate_that_never_attaches_is_rolled_back_at_its_stage_deadline(
        tmp_path: Path, controller: ControllerProc, make_node: Any, key: Path) -> None:
    node = _supervised(make_node, controller, "rt-hang", "--stage-deadline-s", "3")
    bundle = tmp_path / "runtime-hang.bundle"
    build_runtime_bundle(bundle, name="tether-runtime", version=2,
                         key=load_private_key(key), runtime_version=NEW_VERSION,
                         broken="hang")

    _install(node, bundle)
    record = _decided(node)
    assert (record.outcome, record.failed_stage) == ("rolled_back", "attaching")
    assert "did not complete within 3 s" in record.reason
    wait_until(lambda: _reported(node, record), what="the restored runtime to report")
    wait_until(lambda: controller.api().liveness("rt-hang") == "online", what="online")


def test_a_supervisor_killed_mid_update_decides_it_by_the_pointer_when_it_starts_again(
        tmp_path: Path, controller: ControllerProc, make_node: Any, key: Path) -> None:
    node = _supervised(make_node, controller, "rt-kill", "--stage-deadline-s", "30")
    bundle = tmp_path / "runtime-hang.bundle"
    build_runtime_bundle(bundle, name="tether-runtime", version=2,
                         key=load_private_key(key), runtime_version=NEW_VERSION,
                         broken="hang")
    _install(node, bundle)
    wait_until(lambda: (r := slots.read_record(node.state_dir)) is not None
               and r.stage == "attaching", what="the candidate to start")
    record = slots.read_record(node.state_dir)
    assert record is not None and record.candidate_pid is not None
    pid = record.candidate_pid
    node.kill9()  # the supervisor; its candidate hangs on, orphaned
    node.start()
    decided = _decided(node, timeout_s=20)
    assert (decided.outcome, decided.failed_stage) == ("rolled_back", "attaching")
    assert "supervisor stopped" in decided.reason
    wait_until(lambda: _reported(node, decided), what="the runtime to report")
    wait_until(lambda: controller.api().liveness("rt-kill") == "online", what="online")
    assert slots.read_pointer(node.state_dir).slot == "base"
    wait_until(lambda: not _alive(pid), what="the orphaned candidate gone")


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        return b"State:\tZ" not in Path(f"/proc/{pid}/status").read_bytes()
    except OSError:
        return False


def _local_update(node: NodeProc, body: dict[str, Any]) -> bytes:
    """A supervisor's local.update to the node's sidecar; the sidecar's answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(node.state_dir / "sidecar.sock"))
        sock.sendall(encode_local(Frame(t="local.update", b=body)))
        return sock.recv(256)


def test_the_sidecar_ignores_a_hostile_local_update_and_forgets_one_past_its_deadline(
        controller: ControllerProc, make_node: Any) -> None:
    node = make_node("rt-local")
    api = controller.api()
    for body in ({"update": {"stage": "exploding"}}, {"update": {"stage": "replay",
                                                                "age_s": float("nan")}},
                 {"update": "updating"}, {"update": {"stage": "replay", "slot": "../x"}}):
        assert _local_update(node, body)  # answered, and the runtime stays attached
    assert api.node("rt-local")["runtime"] == {"state": "attached", "version": __version__}
    assert api.liveness("rt-local") == "online"
    # a supervisor that dies mid-stage: the sidecar shows it only until its deadline
    _local_update(node, {"update": {"stage": "readiness", "version": "9.9.9",
                                    "deadline_s": 0.5}})
    wait_until(lambda: api.liveness("rt-local") == "updating", what="updating")
    assert api.node("rt-local")["runtime"]["update"]["stage"] == "readiness"
    # the next heartbeat (every 0.5 s with the test settings) no longer has it
    wait_until(lambda: api.liveness("rt-local") == "online", timeout_s=30,
               what="the stage to be forgotten after its deadline")


def test_a_supervisor_started_again_takes_over_from_the_runtime_its_predecessor_left(
        controller: ControllerProc, make_node: Any) -> None:
    node = _supervised(make_node, controller, "rt-orphan")
    api = controller.api()
    session = api.node("rt-orphan")["session"]
    old = int((node.state_dir / "runtime.pid").read_text())
    node.kill9()  # the supervisor only: its runtime runs on, orphaned
    assert _alive(old)
    node.start()
    wait_until(lambda: not _alive(old), what="the orphaned runtime to stop")
    wait_until(lambda: read_pid(node.state_dir / "runtime.pid") not in (None, old),
               what="the new supervisor's runtime")
    wait_until(lambda: api.liveness("rt-orphan") == "online", what="online")
    assert api.node("rt-orphan")["session"]["opened_at"] == session["opened_at"]


def _offer_runtime(api: Api, node: NodeProc, bundle: Path, pub: Path,
                   node_id: str) -> dict[str, Any]:
    """The whole path: the bundle published, its key trusted on the node, offered as
    ``update.now``; returns the command once it ended."""
    from tether.cli.bundle import load_public_key, trust
    from tether.protocol.frames import TERMINAL_STATES

    trust(node.state_dir, load_public_key(pub), None)
    resp = api.post("/api/v1/bundles", content=bundle.read_bytes(),
                    headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.text
    published = resp.json()
    cmd = api.submit(node_id, "update.now", {
        "name": published["name"], "version": published["version"], "kind": "runtime",
        "sha256": published["sha256"], "size": published["size"]})
    return wait_until(lambda: (c := api.command(cmd["command_id"]))["state"]
                      in TERMINAL_STATES and c, timeout_s=120, what="update.now to end")


def test_update_now_of_a_runtime_bundle_promotes_it_on_the_same_session(
        tmp_path: Path, controller: ControllerProc, make_node: Any, key: Path) -> None:
    node = _supervised(make_node, controller, "rt-offer")
    api = controller.api()
    session = api.node("rt-offer")["session"]
    bundle = tmp_path / "runtime-2.bundle"
    build_runtime_bundle(bundle, name="tether-runtime", version=2,
                         key=load_private_key(key), runtime_version=NEW_VERSION)

    done = _offer_runtime(api, node, bundle, Path(f"{key}.pub"), "rt-offer")
    assert done["state"] == "succeeded", done
    assert done["result"] == {"name": "tether-runtime", "version": 2, "state": "healthy"}
    wait_until(lambda: api.node("rt-offer")["runtime"].get("version") == NEW_VERSION,
               what="the new runtime version")
    view = wait_until(lambda: (v := api.node("rt-offer"))["bundles"].get(
        "tether-runtime", {}).get("state") == "healthy" and v, what="bundles healthy")
    assert view["session"]["session_id"] == session["session_id"]
    assert view["session"]["opened_at"] == session["opened_at"]


def test_update_now_of_a_runtime_that_crashes_fails_with_the_recovery_metadata(
        tmp_path: Path, controller: ControllerProc, make_node: Any, key: Path) -> None:
    node = _supervised(make_node, controller, "rt-offer-bad")
    api = controller.api()
    bundle = tmp_path / "runtime-crash.bundle"
    build_runtime_bundle(bundle, name="tether-runtime", version=2,
                         key=load_private_key(key), runtime_version=NEW_VERSION,
                         broken="crash")

    done = _offer_runtime(api, node, bundle, Path(f"{key}.pub"), "rt-offer-bad")
    assert done["state"] == "failed", done
    assert done["error"].startswith("rolled_back: update_failed: "), done
    view = wait_until(lambda: (v := api.node("rt-offer-bad"))["bundles"].get(
        "tether-runtime", {}).get("state") == "rolled_back" and v, what="bundles rolled back")
    assert view["runtime"]["version"] == __version__
    assert slots.read_pointer(node.state_dir).slot == "base"
    events = api.get("/api/v1/nodes/rt-offer-bad/events").json()["items"]
    rolled = [e for e in events if e.get("kind") == "bundle.status"
              and e["data"].get("state") == "rolled_back"]
    assert rolled, events
    detail = rolled[-1]["data"]["detail"]
    assert detail["stage"] == "attaching" and detail["slot"] == "a"
    assert detail["backup_path"] and detail["log_tail"]

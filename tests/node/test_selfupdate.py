"""node/selfupdate.py and node/slots.py: deferral while live media runs (and force), the
slot install, the hand-over to the supervisor, and the one report of a decided update."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tether.cli.bundle import build, keygen, load_private_key
from tether.cli.bundle_runtime import build_runtime_bundle
from tether.node import slots
from tether.node.selfupdate import InstallFailed, SelfUpdate, media_busy
from tether.protocol.bundle import Manifest, read_bundle
from tether.protocol.selfupdate import SlotPointer, UpdateRecord, UpdateRequest
from tether.protocol.update import BundleStatus, UpdateOffer, parse_bundle_status

from ..helpers import until

CONNECTED = {"peers": [{"state": "connected"}, {"state": "connecting"}]}


@pytest.fixture(scope="module")
def runtime_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    d = tmp_path_factory.mktemp("bundle")
    keygen(d / "k")
    out = d / "runtime.bundle"
    manifest = build_runtime_bundle(out, name="tether-runtime", version=3,
                                    key=load_private_key(d / "k"), runtime_version="9.9.9")
    return out, manifest


def _offer(manifest: Manifest, *, force: bool = False) -> UpdateOffer:
    return UpdateOffer(name=manifest.name, version=manifest.version, kind="runtime",
                       sha256="0" * 64, size=1, force=force, rollout_id="r1")


class Harness:
    def __init__(self, state_dir: Path, *, supervised: bool = True) -> None:
        self.reports: list[BundleStatus] = []
        self.finished: list[tuple[Any, ...]] = []
        self.media: dict[str, Any] | None = None
        self.updater = SelfUpdate(state_dir=state_dir, supervised=supervised,
                                  report=self.report, finish=self.finish,
                                  media=lambda: self.media, max_defer_s=30,
                                  defer_poll_s=0.01)

    async def report(self, status: BundleStatus) -> None:
        parse_bundle_status(status.body())  # what leaves parses by the contract
        self.reports.append(status)

    async def finish(self, *args: Any) -> None:
        self.finished.append(args)


def test_media_is_busy_only_while_a_peer_is_connected() -> None:
    assert media_busy(None) is None
    assert media_busy({"peers": []}) is None
    assert media_busy({"peers": [{"state": "connecting"}, {"state": "closed"}]}) is None
    assert media_busy({"peers": "nope"}) is None
    assert media_busy(CONNECTED) == "live media: 1 WebRTC peer(s) connected"


async def test_an_update_waits_deferred_while_media_runs_then_installs_when_it_ends(
        tmp_path: Path, runtime_bundle: tuple[Path, Manifest]) -> None:
    h = Harness(tmp_path)
    h.media = CONNECTED
    bundle, manifest = runtime_bundle
    task = asyncio.ensure_future(h.updater.install(_offer(manifest), manifest, bundle,
                                                   command_id="cmd-7"))
    await until(lambda: h.reports)
    assert [(r.state, r.reason) for r in h.reports] == [
        ("deferred", "live media: 1 WebRTC peer(s) connected")]
    assert not task.done() and slots.read_request(tmp_path) is None
    h.media = {"peers": [{"state": "closed"}]}
    await asyncio.wait_for(task, 30)
    request = slots.read_request(tmp_path)
    assert request is not None
    assert (request.slot, request.version, request.command_id, request.bundle_version,
            request.rollout_id) == ("a", "9.9.9", "cmd-7", 3, "r1")
    assert slots.slot_version(tmp_path / "runtime" / "slots" / "a") == "9.9.9"
    assert h.updater.keep_running() == {"cmd-7"}
    assert h.updater.handed_over("cmd-7") and not h.updater.handed_over("cmd-8")


async def test_force_installs_at_once_while_media_runs(
        tmp_path: Path, runtime_bundle: tuple[Path, Manifest]) -> None:
    h = Harness(tmp_path)
    h.media = CONNECTED
    bundle, manifest = runtime_bundle
    await h.updater.install(_offer(manifest, force=True), manifest, bundle)
    assert h.reports == []
    request = slots.read_request(tmp_path)
    assert request is not None and request.force


async def test_a_deferral_past_its_deadline_fails_and_changes_nothing(
        tmp_path: Path, runtime_bundle: tuple[Path, Manifest]) -> None:
    h = Harness(tmp_path)
    h.updater.max_defer_s = 0.05
    h.media = CONNECTED
    bundle, manifest = runtime_bundle
    with pytest.raises(InstallFailed) as err:
        await h.updater.install(_offer(manifest), manifest, bundle)
    assert err.value.code == "update_failed" and err.value.detail == {"stage": "deferred"}
    assert slots.read_request(tmp_path) is None
    assert not (tmp_path / "runtime" / "slots" / "a").exists()


async def test_a_runtime_without_a_supervisor_refuses_a_runtime_bundle(
        tmp_path: Path, runtime_bundle: tuple[Path, Manifest]) -> None:
    h = Harness(tmp_path, supervised=False)
    bundle, manifest = runtime_bundle
    with pytest.raises(InstallFailed, match="supervisor"):
        await h.updater.install(_offer(manifest), manifest, bundle)


async def test_the_next_bundle_goes_to_the_slot_that_is_not_active(
        tmp_path: Path, runtime_bundle: tuple[Path, Manifest]) -> None:
    (tmp_path / "runtime" / "slots" / "a" / "tether" / "cli").mkdir(parents=True)
    (tmp_path / "runtime" / "slots" / "a" / "tether" / "cli" / "main.py").write_text("")
    slots.write_pointer(tmp_path, SlotPointer(slot="a", version="1.0.0"))
    h = Harness(tmp_path)
    bundle, manifest = runtime_bundle
    await h.updater.install(_offer(manifest), manifest, bundle)
    request = slots.read_request(tmp_path)
    assert request is not None and request.slot == "b"
    assert (tmp_path / "runtime" / "slots" / "a" / "tether" / "cli" / "main.py").read_text() \
        == ""  # the active slot is never written


async def test_an_app_bundle_is_not_installed_as_a_runtime(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "tether-app.toml").write_text('argv = ["/bin/true"]\n')
    keygen(tmp_path / "k")
    manifest = build(app, name="an-app", version=1, key=load_private_key(tmp_path / "k"),
                     out=tmp_path / "app.bundle", kind="runtime")
    h = Harness(tmp_path / "state")
    with pytest.raises(InstallFailed) as err:
        await h.updater.install(_offer(manifest), manifest, tmp_path / "app.bundle")
    assert err.value.code == "activation_failed" and "tether/cli/main.py" in err.value.message


async def test_a_bundle_file_other_than_the_one_checked_is_refused(
        tmp_path: Path, runtime_bundle: tuple[Path, Manifest]) -> None:
    _, manifest = runtime_bundle
    other = tmp_path / "other.bundle"
    keygen(tmp_path / "k")
    build_runtime_bundle(other, name="tether-runtime", version=4,
                         key=load_private_key(tmp_path / "k"))
    with pytest.raises(slots.SlotError, match="not the one checked"):
        slots.install_into_slot(tmp_path, other, manifest, "a")
    assert read_bundle(other.read_bytes()).manifest != manifest


def _decide(state_dir: Path, outcome: str, **kw: Any) -> UpdateRecord:
    request = UpdateRequest(update_id="u9", slot="a", name="tether-runtime", bundle_version=3,
                            requested_at_ms=1, version="9.9.9", command_id="cmd-7",
                            rollout_id="r1")
    record = UpdateRecord(request=request, previous=SlotPointer(bundle_version=2),
                          stage="attaching", stage_started_ms=1, deadline_ms=2,
                          outcome=outcome, **kw)
    slots.write_record(state_dir, record)
    return record


async def test_a_promotion_is_reported_healthy_once_and_the_command_succeeds(
        tmp_path: Path) -> None:
    _decide(tmp_path, "promoted")
    h = Harness(tmp_path)
    assert h.updater.keep_running() == {"cmd-7"}
    assert await h.updater.report_once()
    assert not await h.updater.report_once()  # never twice, restarts included
    assert not await Harness(tmp_path).updater.report_once()
    [status] = h.reports
    assert (status.state, status.kind, status.version, status.active,
            status.last_known_good, status.rollout_id) == ("healthy", "runtime", 3, 3, 2, "r1")
    assert status.detail["slot"] == "a" and status.detail["runtime_version"] == "9.9.9"
    assert h.finished == [("cmd-7", True, None, {"name": "tether-runtime", "version": 3,
                                                 "state": "healthy"})]
    assert h.updater.keep_running() == frozenset()


async def test_a_rollback_is_reported_with_the_recovery_metadata_and_the_command_fails(
        tmp_path: Path) -> None:
    _decide(tmp_path, "rolled_back", failed_stage="readiness",
            reason="readiness did not complete within 60 s", backup_path="/opt/tether",
            log_tail=("line 1", "boom"))
    h = Harness(tmp_path)
    assert await h.updater.report_once()
    [status] = h.reports
    assert (status.state, status.code, status.active) == ("rolled_back", "update_failed", 2)
    assert dict(status.detail) == {"stage": "readiness", "slot": "a", "backup_slot": "base",
                                   "backup_path": "/opt/tether", "runtime_version": "9.9.9",
                                   "log_tail": ["line 1", "boom"], "update_id": "u9"}
    [(command_id, ok, error, result)] = h.finished
    assert (command_id, ok, result) == ("cmd-7", False, None)
    assert error == ("rolled_back: update_failed: stage readiness: readiness did not "
                     "complete within 60 s")


async def test_an_undecided_update_is_not_reported(tmp_path: Path) -> None:
    _decide(tmp_path, None)  # type: ignore[arg-type]
    h = Harness(tmp_path)
    assert not await h.updater.report_once()
    assert h.updater.keep_running() == {"cmd-7"}


def test_an_unreadable_request_is_removed_and_ignored(tmp_path: Path) -> None:
    path = slots.request_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"update_id": "x", "slot": "../../etc"}')
    assert slots.read_request(tmp_path) is None
    assert not path.exists()


def test_a_pointer_to_a_missing_slot_reads_as_the_installed_package(tmp_path: Path) -> None:
    slots.write_pointer(tmp_path, SlotPointer(slot="b", version="2.0.0"))
    assert slots.read_pointer(tmp_path) == SlotPointer()
    (slots.runtime_dir(tmp_path) / "active.json").write_text("{not json")
    assert slots.read_pointer(tmp_path) == SlotPointer()

"""node/bundles.py and node/bundlefetch.py without a controller: every check before
activation, the crash-safe switch (a real crash, os._exit in a forked child, between each
pair of steps), and the download against a small hostile HTTP server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tether.cli.bundle import build, keygen, load_private_key, load_public_key, trust
from tether.node.bundlefetch import DownloadFailed, Source, download, source_url
from tether.node.bundles import BundleDisk, verify_bundle
from tether.node.policy import Policy
from tether.protocol.bundle import BundleError, read_bundle
from tether.protocol.node_http import parse_node_authorization
from tether.protocol.signing import generate_private_key, public_key_raw
from tether.protocol.update import UpdateOffer

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    out = {}
    for name in ("good", "other", "second"):
        keygen(tmp_path / name)
        out[name] = load_private_key(tmp_path / name)
        out[name + ".pub"] = load_public_key(Path(f"{tmp_path / name}.pub"))
    return out


def make(tmp_path: Path, key: Any, version: int = 2, *, name: str = "web",
         toml: str = 'argv = ["./run"]\n', body: str = "v", **kw: Any) -> Path:
    root = tmp_path / f"src-{name}-{version}-{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    (root / "tether-app.toml").write_text(toml)
    (root / "run").write_text(f"#!/bin/sh\necho {body}\n")
    (root / "run").chmod(0o755)
    (root / "lib").mkdir()
    (root / "lib" / "data.txt").write_text(body * 100)
    out = tmp_path / f"{root.name}.bundle"
    kw.setdefault("now", NOW - timedelta(days=1))
    kw.setdefault("min_runner_version", "0.0.1")
    build(root, name=name, version=version, key=key, out=out, **kw)
    return out


def offer_for(path: Path, name: str = "web", version: int = 2, **kw: Any) -> UpdateOffer:
    raw = path.read_bytes()
    return UpdateOffer(name=name, version=version, kind=kw.pop("kind", "app"),
                       sha256=hashlib.sha256(raw).hexdigest(), size=len(raw), **kw)


def check(path: Path, state: Path, *, highest: int | None = None, policy: Policy | None = None,
          **kw: Any) -> None:
    verify_bundle(path, offer_for(path, **kw), state_dir=state, policy=policy or Policy(),
                  highest=highest, now=NOW)


def code_of(fn: Callable[[], None]) -> str:
    with pytest.raises(BundleError) as info:
        fn()
    return info.value.code


def test_a_bundle_signed_by_a_trusted_key_passes_every_check(
        tmp_path: Path, keys: dict[str, Any]) -> None:
    trust(tmp_path, keys["good.pub"], None)
    check(make(tmp_path, keys["good"]), tmp_path)


def test_each_check_refuses_with_its_code_before_anything_is_unpacked(
        tmp_path: Path, keys: dict[str, Any]) -> None:
    state = tmp_path / "state"
    good = make(tmp_path, keys["good"])
    assert code_of(lambda: check(good, state)) == "untrusted_key"  # no trust file at all
    trust(state, keys["good.pub"], None)
    by_other = make(tmp_path, keys["other"])
    assert code_of(lambda: check(by_other, state)) == "untrusted_key"
    tampered = tmp_path / "tampered.bundle"
    raw = bytearray(good.read_bytes())
    parts = read_bundle(bytes(raw))
    raw[parts.payload_offset + parts.payload_size // 2] ^= 0x01  # one byte of app.tar.gz
    tampered.write_bytes(bytes(raw))
    assert code_of(lambda: check(tampered, state)) == "sha256_mismatch"
    manifest_flip = tmp_path / "manifest.bundle"
    raw = bytearray(good.read_bytes())
    at = raw.index(b'"min_runner_version":"0.0.1"') + len('"min_runner_version":"0.0.')
    raw[at] = ord("2")  # still canonical, still valid: only the signature notices
    manifest_flip.write_bytes(bytes(raw))
    assert code_of(lambda: check(manifest_flip, state)) == "bad_signature"
    expired = make(tmp_path, keys["good"], now=NOW - timedelta(days=10), expires_in_days=1)
    assert code_of(lambda: check(expired, state)) == "bundle_expired"
    too_new = make(tmp_path, keys["good"], min_runner_version="99.0.0")
    assert code_of(lambda: check(too_new, state)) == "runner_too_old"
    assert code_of(lambda: check(good, state, highest=5)) == "downgrade"
    check(good, state, highest=5, rollback=True)  # an explicit rollback may go down
    check(good, state, highest=2)  # the same version again is no downgrade
    assert code_of(lambda: check(good, state, kind="runtime")) == "wrong_kind"
    assert code_of(lambda: check(good, state, version=3)) == "bad_manifest"
    needs_exec = make(tmp_path, keys["good"], toml='argv = ["./run"]\n[policy]\n'
                      'kinds = ["exec"]\nexecutables = ["/usr/bin/curl"]\n')
    assert code_of(lambda: check(needs_exec, state, policy=Policy(
        deny_kinds=("exec",)))) == "policy_mismatch"
    assert code_of(lambda: check(needs_exec, state, policy=Policy(
        exec_allow=("/bin/true",)))) == "policy_mismatch"
    trust(state, keys["second.pub"], 2)
    assert code_of(lambda: check(good, state)) == "threshold_not_met"
    assert not (state / "bundles").exists()


# --- the crash-safe switch ---------------------------------------------------------------

STEPS = ("staging", "staged", "placed", "switched", "pruned")


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file()}


def activate(disk: BundleDisk, path: Path, version: int) -> None:
    slot = disk.unpack("web", version, path)
    disk.switch("web", slot)
    disk.prune("web")


@pytest.mark.parametrize("crash_after", STEPS)
def test_a_crash_between_any_two_steps_leaves_the_whole_old_or_the_whole_new_version(
        tmp_path: Path, keys: dict[str, Any], crash_after: str) -> None:
    v1 = make(tmp_path, keys["good"], 1, body="one")
    v2 = make(tmp_path, keys["good"], 2, body="two")
    root = tmp_path / "bundles"
    disk = BundleDisk(root)
    activate(disk, v1, 1)
    st = disk.load("web")
    assert st.active is not None
    st.active.healthy = True
    disk.save("web", st)
    old_files = files_of(disk.version_dir("web", st.active))
    pid = os.fork()
    if pid == 0:  # the child dies as kill -9 would: no clean-up, no finally
        def die(label: str) -> None:
            if label == crash_after:
                os._exit(9)
        try:
            activate(BundleDisk(root, step=die), v2, 2)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    after, interrupted = BundleDisk(root).restore("web")
    assert interrupted is None and after.active is not None
    expected_new = STEPS.index(crash_after) >= STEPS.index("switched")
    assert after.active.version == (2 if expected_new else 1)
    active_files = files_of(root / "web" / after.active.dir)
    if expected_new:
        assert b"echo two" in active_files["run"] and after.highest == 2
        assert after.last_known_good is not None and after.last_known_good.version == 1
    else:
        assert active_files == old_files and after.highest == 1
    kept = {p.name for p in (root / "web").iterdir()}
    assert kept == {"state.json"} | {s.dir for s in (after.active, after.last_known_good)
                                     if s is not None}


def test_restore_reports_an_interrupted_attempt_once_and_drops_stray_files(
        tmp_path: Path, keys: dict[str, Any]) -> None:
    disk = BundleDisk(tmp_path / "bundles")
    activate(disk, make(tmp_path, keys["good"], 1), 1)
    st = disk.load("web")
    st.attempt = {"version": 2, "command_id": "c1"}
    disk.save("web", st)
    (tmp_path / "bundles" / "web" / ".state.json.dead.tmp").write_text("{")
    (tmp_path / "bundles" / "web" / ".stage-dead").mkdir()
    _, interrupted = disk.restore("web")
    assert interrupted == {"version": 2, "command_id": "c1"}
    assert disk.restore("web")[1] is None
    active = disk.load("web").active
    assert active is not None
    assert {p.name for p in (tmp_path / "bundles" / "web").iterdir()} == {"state.json",
                                                                         active.dir}


def test_a_garbage_state_file_reads_as_no_bundle(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "state.json").write_text('{"active": {"version": "1; rm -rf /"}}')
    disk = BundleDisk(tmp_path)
    assert disk.load("web").active is None
    (tmp_path / "web" / "state.json").write_bytes(b"\xff\x00")
    assert disk.restore("web")[0].active is None


# --- the download --------------------------------------------------------------------------

FILE = os.urandom(300_000)


class Server:
    """A tiny HTTP/1.1 server whose answers a test scripts, request by request."""

    def __init__(self, script: list[str], data: bytes = FILE) -> None:
        self.script = script
        self.data = data
        self.requests: list[dict[str, str]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            headers["path"] = lines[0].split()[1]
            self.requests.append(headers)
            how = self.script[min(len(self.requests), len(self.script)) - 1]
            start = int(headers.get("range", "bytes=0-")[6:].rstrip("-") or 0)
            body, status = self.data[start:], 206 if "range" in headers else 200
            if how == "full":
                body, status = self.data, 200
            elif how == "cut":
                status = 200 if start == 0 else 206
            elif how == "oversize":
                body, status = self.data + b"x" * 1000, 200
            elif how == "garbage":
                body, status = bytes(len(self.data)), 200
            elif how.isdigit():
                body, status = b"no", int(how)
            extra = f"Content-Range: bytes {start}-{len(self.data) - 1}/{len(self.data)}\r\n" \
                if status == 206 else ""
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}"
                         "Connection: close\r\n\r\n".encode())
            writer.write(body[:len(body) // 2] if how == "cut" else body)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[list[str]], Any]]:
    servers: list[asyncio.Server] = []

    async def start(script: list[str], data: bytes = FILE) -> tuple[Server, Source]:
        s = Server(script, data)
        srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        return s, Source(f"http://127.0.0.1:{port}", "n1", KEY, {})
    yield start
    for srv in servers:
        srv.close()


KEY = generate_private_key()
OFFER = UpdateOffer(name="web", version=2, kind="app",
                    sha256=hashlib.sha256(FILE).hexdigest(), size=len(FILE))


async def fetch(source: Source, part: Path, offer: UpdateOffer = OFFER) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []

    async def progress(have: int, resumed_from: int) -> None:
        seen.append((have, resumed_from))
    await download(source, offer, part, progress=progress, max_tries=4)
    return seen


async def test_a_download_cut_in_the_middle_resumes_with_range_and_verifies(
        serve: Any, tmp_path: Path) -> None:
    server, source = await serve(["cut", "rest"])
    part = tmp_path / "d" / "web.part"
    seen = await fetch(source, part)
    assert part.read_bytes() == FILE
    assert len(server.requests) == 2
    have = int(server.requests[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < have <= len(FILE) // 2  # what arrived before the cut is kept, not refetched
    assert seen == [(0, 0), (have, have)]
    auth = parse_node_authorization(server.requests[0]["authorization"])
    assert auth is not None and auth.node_id == "n1"
    auth.verify(public_key_raw(KEY), "GET", "/api/v1/bundles/web/2/file",
                now_ms=auth.unix_ms)


async def test_a_200_to_a_range_request_starts_over_from_zero(
        serve: Any, tmp_path: Path) -> None:
    _, source = await serve(["cut", "full"])
    part = tmp_path / "web.part"
    await fetch(source, part)
    assert part.read_bytes() == FILE


@pytest.mark.parametrize(("script", "code"), [
    (["oversize"], "size_mismatch"), (["garbage"], "sha256_mismatch"),
    (["401"], "download_failed"), (["404"], "download_failed"),
    (["416", "416"], "download_failed"), (["503"] * 4, "download_failed")])
async def test_a_hostile_or_failing_controller_ends_the_download_with_its_code(
        serve: Any, tmp_path: Path, script: list[str], code: str) -> None:
    _, source = await serve(script)
    part = tmp_path / "web.part"
    with pytest.raises(DownloadFailed) as info:
        await fetch(source, part)
    assert info.value.code == code
    if code != "download_failed":
        assert not part.exists()  # nothing of another file is kept to resume from


async def test_a_part_file_longer_than_the_offer_is_dropped_not_trusted(
        serve: Any, tmp_path: Path) -> None:
    _, source = await serve(["full"])
    part = tmp_path / "web.part"
    part.write_bytes(FILE + b"junk")
    await fetch(source, part)
    assert part.read_bytes() == FILE


def test_the_download_url_is_the_http_override_else_node_json() -> None:
    assert source_url("http://127.0.0.1:9/", "https://ctl") == "http://127.0.0.1:9"
    assert source_url(None, "https://ctl/") == "https://ctl"
    assert source_url("ws://x", "wss://ctl/v1/edge/connect") == "https://ctl"
    assert json.dumps(source_url(None, "http://a:1")) == '"http://a:1"'


# --- hostile offers ------------------------------------------------------------------------

GOOD_ARGS = {"name": "web", "version": 2, "sha256": "a" * 64, "size": 10}


@pytest.mark.parametrize(("args", "field"), [
    ({}, "name"), ({**GOOD_ARGS, "name": "../etc"}, "name"),
    ({**GOOD_ARGS, "version": 0}, "version"), ({**GOOD_ARGS, "version": True}, "version"),
    ({**GOOD_ARGS, "sha256": "A" * 64}, "sha256"), ({**GOOD_ARGS, "size": 2**41}, "size"),
    ({**GOOD_ARGS, "kind": "kernel"}, "kind"),
    ({**GOOD_ARGS, "probation_s": -1}, "probation_s"),
    ({**GOOD_ARGS, "failure_threshold": 0}, "failure_threshold"),
    ({**GOOD_ARGS, "rollback": "yes"}, "rollback"),
    ({**GOOD_ARGS, "rollout_id": "x" * 65}, "rollout_id")])
async def test_a_bad_offer_is_rejected_when_applied_naming_its_field_and_never_runs(
        tmp_path: Path, args: dict[str, Any], field: str) -> None:
    from tether.node.store import NodeStore
    from tether.protocol.frames import CmdDeliver

    store = NodeStore(tmp_path / "n.db")
    await store.open()
    try:
        frame = CmdDeliver(command_id="u1", kind="update.now", args=args,
                           created_ms=1).frame(s="cmd", q=1)
        applied = await store.apply_downlink([frame])
        assert applied.to_run == []
        (status,) = [f.b for f in await store.outbox_after(0, 10)]
        assert status["state"] == "rejected"
        assert status["error"].startswith("bad update.now args: ")
        assert f"'{field}'" in status["error"]
        good = CmdDeliver(command_id="u2", kind="update.now", args=GOOD_ARGS,
                          created_ms=1).frame(s="cmd", q=2)
        assert [c["command_id"] for c in (await store.apply_downlink([good])).to_run] \
            == ["u2"]
    finally:
        await store.close()


# --- the manager: reports, probation, rollback ----------------------------------------------


async def test_an_attempt_reports_each_step_and_a_crashing_version_rolls_back_with_figures(
        serve: Any, tmp_path: Path, keys: dict[str, Any]) -> None:
    from tether.node.apps import AppSupervisor
    from tether.node.bundles import BundleManager
    from tether.node.logbuf import LogBuffer
    from tether.protocol.update import BundleStatus, parse_bundle_status

    state = tmp_path / "state"
    trust(state, keys["good.pub"], None)
    good = make(tmp_path, keys["good"], 1, toml='argv = ["./run"]\nrestart = "always"\n',
                body="up; exec sleep 60")
    (tmp_path / "crash").mkdir()
    bad = make(tmp_path / "crash", keys["good"], 2,
               toml='argv = ["sh", "-c", "echo boom-$0; exit 5"]\nrestart = "on-failure"\n')
    sent: list[BundleStatus] = []

    async def emit(status: BundleStatus) -> None:
        assert parse_bundle_status(status.body()) == status
        sent.append(status)
    apps = AppSupervisor({}, logs=LogBuffer(), pids_path=state / "apps.pids.json",
                         on_output=lambda: None, on_change=lambda table: None)
    async with asyncio.TaskGroup() as tg:
        apps.start_all(tg)
        sources: list[Source] = []
        manager = BundleManager(state_dir=state, apps=apps, policy=Policy(),
                                source=lambda: sources[-1], emit=emit, now=lambda: NOW)
        await manager.restore()  # nothing there yet: attempts wait for it
        for path, version in ((good, 1), (bad, 2)):
            sources.append((await serve(["full"], path.read_bytes()))[1])
            end = await manager.run(f"c{version}", offer_for(
                path, version=version, probation_s=0.0 if version == 1 else 30.0,
                failure_threshold=2))
            if version == 1:
                assert end.state == "healthy", end
                assert apps.states["web"].state == "running"
        await apps.stop_all()
    assert [s.state for s in sent] == ["downloading", "verified", "activated", "healthy",
                                       "downloading", "verified", "activated",
                                       "rolled_back"]
    assert (end.code, end.active, end.last_known_good) == ("start_failed", 1, None)
    assert end.detail["failed_starts"] == 2 and end.detail["exit_codes"] == [5, 5]
    assert "boom-" in "".join(end.detail["log_tail"])
    assert manager.status()["web"] == {"active": 1, "last_known_good": None,
                                       "state": "rolled_back", "version": 2,
                                       "reason": end.reason}
    assert manager.disk.load("web").highest == 2


async def run_alone(serve: Any, state: Path, bundle: Path, **offer: Any
                    ) -> tuple[Any, dict[str, Any]]:
    """One offer applied by a fresh manager and supervisor; its end and the app's state
    (as_dict, with ``up_s``: how long its current run had been up; {} once removed) at
    that end."""
    import time

    from tether.node.apps import AppSupervisor
    from tether.node.bundles import BundleManager
    from tether.node.logbuf import LogBuffer
    from tether.protocol.update import BundleStatus

    async def emit(status: BundleStatus) -> None:
        pass
    apps = AppSupervisor({}, logs=LogBuffer(), pids_path=state / "apps.pids.json",
                         on_output=lambda: None, on_change=lambda table: None)
    async with asyncio.TaskGroup() as tg:
        apps.start_all(tg)
        source = (await serve(["full"], bundle.read_bytes()))[1]
        manager = BundleManager(state_dir=state, apps=apps, policy=Policy(),
                                source=lambda: source, emit=emit, now=lambda: NOW)
        await manager.restore()
        end = await manager.run("c1", offer_for(bundle, version=1, **offer))
        st = apps.states.get("web")  # gone when it failed without a last known good
        app = {**st.as_dict(), "up_s": time.time() - st.since} if st else {}
        await apps.stop_all()
    return end, app


async def test_a_restart_within_probation_extends_it_until_the_new_run_has_been_up_for_it(
        serve: Any, tmp_path: Path, keys: dict[str, Any]) -> None:
    """Fails its first start, then stays up: healthy only once the second run has been up
    for the whole probation, not at the first deadline (when it had been up for less)."""
    state = tmp_path / "state"
    trust(state, keys["good.pub"], None)
    once = tmp_path / "crashed-once"
    bundle = make(tmp_path, keys["good"], 1, toml=(
        f'argv = ["sh", "-c", "[ -e {once} ] && exec sleep 60; touch {once}; exit 3"]\n'
        'restart = "on-failure"\n'))
    end, app = await run_alone(serve, state, bundle, probation_s=1.0, failure_threshold=3)
    assert end.state == "healthy", end
    assert (app["state"], app["restarts"], app["exit_code"]) == ("running", 1, 3), app
    assert app["up_s"] >= 1.0, app


@pytest.mark.parametrize("restart", ["always", "on-failure"])
async def test_an_app_that_never_stays_up_for_its_probation_fails_to_start(
        serve: Any, tmp_path: Path, keys: dict[str, Any], restart: str) -> None:
    """Exits 0 at once, so no start counts as failed: with restart=always it is restarted
    forever and never up long enough (the extensions end); with on-failure it stays down."""
    state = tmp_path / "state"
    trust(state, keys["good.pub"], None)
    bundle = make(tmp_path, keys["good"], 1, toml=(
        f'argv = ["sh", "-c", "exit 0"]\nrestart = "{restart}"\n'))
    end, app = await run_alone(serve, state, bundle, probation_s=0.5, failure_threshold=2)
    assert (end.state, end.code, app) == ("failed", "start_failed", {}), end
    # exits before probation began listening are not counted: only 0s, if any
    assert end.detail["failed_starts"] == 0 and set(end.detail["exit_codes"]) <= {0}, end


@pytest.mark.parametrize(("args", "field"), [
    ({}, "name"), ({"name": "../web"}, "name"), ({"name": 5}, "name"),
    ({"name": "x" * 70}, "name")])
async def test_bad_bundle_stop_args_are_rejected_when_applied_naming_the_field(
        tmp_path: Path, args: dict[str, Any], field: str) -> None:
    from tether.node.store import NodeStore
    from tether.protocol.frames import CmdDeliver

    store = NodeStore(tmp_path / "n.db")
    await store.open()
    try:
        frame = CmdDeliver(command_id="s1", kind="bundle.stop", args=args,
                           created_ms=1).frame(s="cmd", q=1)
        assert (await store.apply_downlink([frame])).to_run == []
        (status,) = [f.b for f in await store.outbox_after(0, 10)]
        assert status["state"] == "rejected"
        assert status["error"].startswith("bad bundle.stop args: ")
        assert f"'{field}'" in status["error"]
        denied = CmdDeliver(command_id="s2", kind="bundle.stop", args={"name": "web"},
                            created_ms=1).frame(s="cmd", q=2)
        applied = await store.apply_downlink(
            [denied], lambda kind, a: Policy(deny_kinds=("bundle.stop",)).check(kind, a))
        assert applied.to_run == []
        last = [f.b for f in await store.outbox_after(0, 10)][-1]
        assert last["state"] == "rejected" and "deny_kinds" in last["error"]
    finally:
        await store.close()


async def test_a_stopped_bundle_stays_stopped_across_a_restart_until_a_new_offer(
        serve: Any, tmp_path: Path, keys: dict[str, Any]) -> None:
    from tether.node.apps import AppSupervisor
    from tether.node.bundles import BundleManager, StopRefused, bundles_on_disk
    from tether.node.logbuf import LogBuffer
    from tether.protocol.update import BundleStatus, BundleStop

    state = tmp_path / "state"
    trust(state, keys["good.pub"], None)
    steady = 'argv = ["./run"]\nrestart = "always"\n'
    v1 = make(tmp_path, keys["good"], 1, toml=steady, body="up; exec sleep 60")
    v2 = make(tmp_path, keys["good"], 2, toml=steady, body="up; exec sleep 60")

    async def emit(status: BundleStatus) -> None:
        pass

    def manager_for(apps: AppSupervisor, sources: list[Source]) -> BundleManager:
        return BundleManager(state_dir=state, apps=apps, policy=Policy(),
                             source=lambda: sources[-1], emit=emit, now=lambda: NOW)

    def supervisor() -> AppSupervisor:
        return AppSupervisor({}, logs=LogBuffer(), pids_path=state / "apps.pids.json",
                             on_output=lambda: None, on_change=lambda table: None)

    apps = supervisor()
    async with asyncio.TaskGroup() as tg:
        apps.start_all(tg)
        sources = [(await serve(["full"], v1.read_bytes()))[1]]
        manager = manager_for(apps, sources)
        await manager.restore()
        with pytest.raises(StopRefused, match="no version of bundle 'web' is active"):
            await manager.stop_app(BundleStop("web"))
        end = await manager.run("c1", offer_for(v1, version=1, probation_s=0.0))
        assert end is not None and end.state == "healthy"
        assert apps.states["web"].state == "running"
        result = await manager.stop_app(BundleStop("web"))
        assert result == {"name": "web", "version": 1, "state": "stopped",
                          "was_running": True}
        assert apps.states["web"].state == "stopped"
        assert manager.status()["web"]["state"] == "stopped"
        again = await manager.stop_app(BundleStop("web"))  # idempotent
        assert again["was_running"] is False
        await apps.stop_all()
    assert manager.disk.load("web").stopped is True
    assert bundles_on_disk(state)["web"]["state"] == "stopped"

    apps = supervisor()  # a runtime restart: the app is declared, not started
    async with asyncio.TaskGroup() as tg:
        apps.start_all(tg)
        sources = [(await serve(["full"], v2.read_bytes()))[1]]
        manager = manager_for(apps, sources)
        await manager.restore()
        assert apps.states["web"].state == "stopped"
        assert "web" not in apps._tasks
        assert manager.status()["web"]["state"] == "stopped"
        end = await manager.run("c2", offer_for(v2, version=2, probation_s=0.0))
        assert end is not None and end.state == "healthy"
        assert apps.states["web"].state == "running"
        await apps.stop_all()
    assert manager.disk.load("web").stopped is False


def test_a_bundle_app_under_a_relative_state_dir_starts_from_its_own_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tether node run --state-dir n-a`: the bundle's directory is relative, and so was
    the program's path, which the exec then looked up from inside that directory (127)."""
    import subprocess

    from tether.node.bundles import app_spec
    from tether.protocol.appspec import AppSpec as BundleApp

    monkeypatch.chdir(tmp_path)
    version_dir = Path("n-a", "bundles", "web", "v1-abc")
    version_dir.mkdir(parents=True)
    (version_dir / "run.sh").write_text("#!/bin/sh\necho started-in \"$(pwd)\"\n")
    (version_dir / "run.sh").chmod(0o755)
    spec = app_spec("web", version_dir, BundleApp(argv=("./run.sh",)))
    assert Path(spec.argv[0]).is_absolute() and Path(str(spec.cwd)).is_absolute()
    done = subprocess.run(spec.argv, cwd=spec.cwd, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done
    assert done.stdout.strip() == f"started-in {(tmp_path / version_dir).resolve()}"

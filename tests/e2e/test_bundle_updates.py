"""The node's bundle plane end to end (issue 15): a real controller and node on loopback;
bundles built with cli/bundle.py, published through the operator API, offered as
``update.now``; outcomes read from the command's state and the node's own status."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.cli.bundle import build, keygen, load_private_key, load_public_key, trust
from tether.protocol.frames import TERMINAL_STATES

from ..helpers import Api, ControllerProc, NodeProc, wait_until

OCTETS = {"Content-Type": "application/octet-stream"}
STEADY = "#!/bin/sh\necho hello-from-{name}-{version}\nexec sleep 120\n"
CRASH = "#!/bin/sh\necho dying-at-once\nexit 7\n"


def make_key(tmp_path: Path, name: str) -> tuple[Any, Path]:
    keygen(tmp_path / name)
    return load_private_key(tmp_path / name), Path(f"{tmp_path / name}.pub")


def bundle(tmp_path: Path, key: Any, name: str, version: int, script: str,
           restart: str = "always") -> Path:
    root = tmp_path / f"src-{name}-{version}-{restart}"
    root.mkdir()
    (root / "tether-app.toml").write_text(f'argv = ["./run"]\nrestart = "{restart}"\n')
    run = root / "run"
    run.write_text(script.format(name=name, version=version))
    run.chmod(0o755)
    out = tmp_path / f"{name}-{version}.bundle"
    build(root, name=name, version=version, key=key, out=out, min_runner_version="0.0.1")
    return out


def publish(api: Api, path: Path) -> dict[str, Any]:
    resp = api.post("/api/v1/bundles", content=path.read_bytes(), headers=OCTETS)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()  # type: ignore[no-any-return]


def offer(api: Api, node_id: str, published: dict[str, Any], **extra: Any) -> dict[str, Any]:
    args = {"name": published["name"], "version": published["version"], "kind": "app",
            "sha256": published["sha256"], "size": published["size"], "probation_s": 2.0,
            "failure_threshold": 2, **extra}
    cmd = api.submit(node_id, "update.now", args)
    return wait_until(lambda: (c := api.command(cmd["command_id"]))["state"]
                      in TERMINAL_STATES and c, timeout_s=60, what="update.now to end")


def bundles(node: NodeProc) -> dict[str, Any]:
    url = (node.state_dir / "runtime.status.url").read_text().strip()
    return httpx.get(url + "/status", timeout=5).json()["bundles"]  # type: ignore[no-any-return]


@pytest.fixture
def node(controller: ControllerProc, tmp_path: Path) -> Any:
    n = NodeProc(tmp_path / "n-b", "n-b")
    n.enroll(controller)
    n.start()
    wait_until(lambda: controller.api().liveness("n-b") == "online", what="online")
    yield n
    n.cleanup()


def test_an_offer_runs_turns_healthy_rolls_back_a_crashing_version_and_refuses_downgrades(
        controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = controller.api()
    key, pub = make_key(tmp_path, "pub")
    trust(node.state_dir, load_public_key(pub), None)

    v1 = publish(api, bundle(tmp_path, key, "web", 1, STEADY))
    done = offer(api, "n-b", v1)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"name": "web", "version": 1, "state": "healthy"}
    assert bundles(node)["web"] == {"active": 1, "last_known_good": None, "state": "healthy",
                                    "version": 1, "reason": "up for 2 s"}
    wait_until(lambda: "hello-from-web-1" in "".join(
        i["data"] for i in api.get("/api/v1/nodes/n-b/logs",
                                   params={"source": "web"}).json()["items"]),
        what="the app's output in the logs")

    v2 = publish(api, bundle(tmp_path, key, "web", 2, CRASH, restart="on-failure"))
    failed = offer(api, "n-b", v2)
    assert failed["state"] == "failed"
    assert failed["error"].startswith("rolled_back: start_failed: "), failed
    view = bundles(node)["web"]
    assert (view["active"], view["state"], view["version"]) == (1, "rolled_back", 2)
    assert node.state_dir.joinpath("bundles", "web", "state.json").read_text().count(
        '"highest": 2') == 1
    wait_until(lambda: api.node("n-b")["apps"]["web"]["state"] == "running",
               what="the last known good running again")

    down = offer(api, "n-b", v1)
    assert down["state"] == "failed" and down["error"].startswith("rejected: downgrade: ")
    back = offer(api, "n-b", v1, rollback=True)
    assert back["state"] == "succeeded", back


def test_untrusted_keys_bad_args_and_a_wrong_sha_are_refused_before_anything_runs(
        controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = controller.api()
    _key, pub = make_key(tmp_path, "pub")
    other, _ = make_key(tmp_path, "other")
    published = publish(api, bundle(tmp_path, other, "web", 1, STEADY))
    none_trusted = offer(api, "n-b", published)
    assert none_trusted["error"].startswith("rejected: untrusted_key: this node trusts no")
    trust(node.state_dir, load_public_key(pub), None)
    wrong_key = offer(api, "n-b", published)
    assert wrong_key["error"].startswith("rejected: untrusted_key: "), wrong_key
    wrong_sha = offer(api, "n-b", {**published, "sha256": "0" * 64})
    assert wrong_sha["error"].startswith("rejected: sha256_mismatch: "), wrong_sha
    bad = offer(api, "n-b", {**published, "size": -5})
    assert bad["state"] == "rejected" and "'size'" in bad["error"], bad
    assert "web" not in api.node("n-b")["apps"]
    assert not any(node.state_dir.joinpath("bundles", "web").glob("v*"))


def test_a_runtime_restart_restores_the_active_bundle_app(
        controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = controller.api()
    key, pub = make_key(tmp_path, "pub")
    trust(node.state_dir, load_public_key(pub), None)
    assert offer(api, "n-b", publish(api, bundle(tmp_path, key, "svc", 3, STEADY)),
                 probation_s=0.5)["state"] == "succeeded"
    node.terminate()
    node.start()
    wait_until(lambda: (node.state_dir / "runtime.status.url").exists()
               and bundles(node).get("svc", {}).get("active") == 3, timeout_s=30,
               what="the bundle restored")
    wait_until(lambda: api.node("n-b")["apps"].get("svc", {}).get("state") == "running",
               timeout_s=30, what="its app running again")


def test_a_failing_health_check_rolls_back_and_a_newer_offer_supersedes_an_unfinished_one(
        controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = controller.api()
    key, pub = make_key(tmp_path, "pub")
    trust(node.state_dir, load_public_key(pub), None)
    assert offer(api, "n-b", publish(api, bundle(tmp_path, key, "web", 1, STEADY)),
                 probation_s=0.5)["state"] == "succeeded"

    root = tmp_path / "src-sick"
    root.mkdir()
    (root / "tether-app.toml").write_text('argv = ["./run"]\nrestart = "always"\n'
                                          '[health]\nargv = ["./check"]\ninterval_s = 0.3\n')
    for name, text in (("run", STEADY.format(name="web", version=2)),
                       ("check", "#!/bin/sh\necho unwell >&2\nexit 3\n")):
        (root / name).write_text(text)
        (root / name).chmod(0o755)
    build(root, name="web", version=2, key=key, out=tmp_path / "sick.bundle",
          min_runner_version="0.0.1")
    sick = offer(api, "n-b", publish(api, tmp_path / "sick.bundle"), probation_s=10.0)
    assert sick["error"].startswith("rolled_back: health_failed: the health check exited 3")
    assert bundles(node)["web"]["active"] == 1

    slow = publish(api, bundle(tmp_path, key, "web", 3, STEADY))
    first = api.submit("n-b", "update.now", {
        "name": "web", "version": 3, "sha256": slow["sha256"], "size": slow["size"],
        "probation_s": 600.0})
    wait_until(lambda: bundles(node)["web"]["state"] == "activated", what="v3 on probation")
    newer = offer(api, "n-b", publish(api, bundle(tmp_path, key, "web", 4, STEADY)),
                  probation_s=0.5)
    assert newer["state"] == "succeeded", newer
    superseded = api.command(first["command_id"])
    assert superseded["state"] == "failed"
    assert superseded["error"].startswith("failed: superseded: version 4 was offered")
    assert bundles(node)["web"]["active"] == 4


def test_a_runtime_bundle_is_refused_on_a_node_without_a_supervisor(
        controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = controller.api()
    key, pub = make_key(tmp_path, "pub")
    trust(node.state_dir, load_public_key(pub), None)
    root = tmp_path / "src-rt"
    root.mkdir()
    (root / "tether-app.toml").write_text('argv = ["./run"]\n')
    (root / "run").write_text("#!/bin/sh\n")
    build(root, name="tether-runtime", version=5, key=key, out=tmp_path / "rt.bundle",
          min_runner_version="0.0.1", kind="runtime")
    done = offer(api, "n-b", publish(api, tmp_path / "rt.bundle"), kind="runtime")
    assert done["error"] == ("rejected: wrong_kind: this node runs without a supervisor")
    as_app = offer(api, "n-b", publish(api, tmp_path / "rt.bundle"))
    assert as_app["error"].startswith("rejected: wrong_kind: the bundle is of kind 'runtime'")


def test_kill_9_of_the_runtime_during_activation_leaves_a_whole_old_or_new_version(
        controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = controller.api()
    key, pub = make_key(tmp_path, "pub")
    trust(node.state_dir, load_public_key(pub), None)
    assert offer(api, "n-b", publish(api, bundle(tmp_path, key, "web", 1, STEADY)),
                 probation_s=0.2)["state"] == "succeeded"
    root = tmp_path / "src-many"
    (root / "data").mkdir(parents=True)
    (root / "tether-app.toml").write_text('argv = ["./run"]\nrestart = "always"\n')
    (root / "run").write_text(STEADY.format(name="web", version=2))
    (root / "run").chmod(0o755)
    for i in range(3000):  # many fsynced files: the unpack lasts long enough to be caught
        (root / "data" / f"f{i}").write_text(f"file {i}\n" * 20)
    build(root, name="web", version=2, key=key, out=tmp_path / "many.bundle",
          min_runner_version="0.0.1")
    v2 = publish(api, tmp_path / "many.bundle")
    cmd = api.submit("n-b", "update.now", {"name": "web", "version": 2,
                                           "sha256": v2["sha256"], "size": v2["size"]})
    web = node.state_dir / "bundles" / "web"
    wait_until(lambda: any(p.name.startswith((".stage-", "v2-")) for p in web.iterdir()),
               timeout_s=60, what="the unpack to begin")
    node.kill9()
    node.start()
    view = wait_until(lambda: (node.state_dir / "runtime.status.url").exists()
                      and bundles(node).get("web"), timeout_s=30, what="restored")
    assert view["active"] in (1, 2)
    entries = {p.name for p in web.iterdir()}
    active = [p for p in web.iterdir() if p.name.startswith("v")]
    assert not any(e.startswith(".") for e in entries) and len(active) in (1, 2)
    state = json.loads((web / "state.json").read_text())
    live = web / state["active"]["dir"]
    if view["active"] == 2:
        assert len(list((live / "data").iterdir())) == 3000
    assert f"hello-from-web-{view['active']}" in (live / "run").read_text()
    wait_until(lambda: api.node("n-b")["apps"].get("web", {}).get("state") == "running",
               what="the active version running")
    ended = wait_until(lambda: (c := api.command(cmd["command_id"]))["state"]
                       in TERMINAL_STATES and c, what="the interrupted command to end")
    assert ended["state"] == "failed" and "interrupted" in ended["error"]


def test_offline_the_app_keeps_running_and_its_reports_wait_in_the_outbox(
        controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = controller.api()
    key, pub = make_key(tmp_path, "pub")
    trust(node.state_dir, load_public_key(pub), None)
    published = publish(api, bundle(tmp_path, key, "web", 1, STEADY))
    cmd = api.submit("n-b", "update.now", {
        "name": "web", "version": 1, "sha256": published["sha256"],
        "size": published["size"], "probation_s": 20.0})  # outlasts the stop
    wait_until(lambda: bundles(node).get("web", {}).get("state") == "activated",
               what="the app on probation")
    controller.terminate()
    assert bundles(node)["web"]["state"] == "activated"  # its outcome comes offline

    def status() -> dict[str, Any]:
        url = (node.state_dir / "runtime.status.url").read_text().strip()
        return httpx.get(url + "/status", timeout=5).json()  # type: ignore[no-any-return]
    # the reports and the command's end wait in the outbox (depth > 0)
    offline = wait_until(lambda: (s := status())["bundles"]["web"]["state"] == "healthy"
                         and not s["readiness"]["ready"] and s["outbox"]["depth"] > 0
                         and s, timeout_s=30, what="healthy while the controller is away")
    assert offline["apps"]["web"]["state"] == "running"
    controller.start()
    api = controller.api()
    done = wait_until(lambda: (c := api.command(cmd["command_id"]))["state"]
                      in TERMINAL_STATES and c, timeout_s=60, what="the backlog synced")
    assert done["state"] == "succeeded"
    assert api.node("n-b")["apps"]["web"]["state"] == "running"


class CuttingProxy:
    """A TCP proxy on loopback (its own loop, in a thread) in front of the controller: the
    first bundle download without a ``Range`` is cut after ``cut_after`` bytes of the
    answer; everything else (the sidecar's session, later requests) flows untouched."""

    def __init__(self, port: int, cut_after: int) -> None:
        self.upstream, self.cut_after = port, cut_after
        self.heads: list[str] = []
        self.cut = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            return
        text = head.decode("latin-1")
        self.heads.append(text)
        limit = None
        if "/file " in text.split("\r\n")[0] and "range:" not in text.lower() \
                and not self.cut:
            self.cut, limit = 1, self.cut_after
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       budget: int | None) -> None:
            try:
                while data := await src.read(65536):
                    if budget is not None:
                        data = data[:budget]
                        budget -= len(data)
                    dst.write(data)
                    await dst.drain()
                    if budget == 0:
                        break
            except OSError:
                pass
            finally:
                dst.close()
                up_writer.close()
                writer.close()
        await asyncio.gather(pipe(reader, up_writer, None),
                             pipe(up_reader, writer, limit))


def test_a_download_cut_in_the_middle_resumes_with_range_and_verifies(
        controller: ControllerProc, tmp_path: Path) -> None:
    proxy = CuttingProxy(controller.port, cut_after=400_000)
    node = NodeProc(tmp_path / "n-cut", "n-cut",
                    extra=["--controller-url", f"http://127.0.0.1:{proxy.port}"])
    try:
        node.enroll(controller)
        node.start()
        api = controller.api()
        wait_until(lambda: api.liveness("n-cut") == "online", what="online via the proxy")
        key, pub = make_key(tmp_path, "pub")
        trust(node.state_dir, load_public_key(pub), None)
        root = tmp_path / "src-big"
        root.mkdir()
        (root / "tether-app.toml").write_text('argv = ["./run"]\nrestart = "always"\n')
        (root / "run").write_text(STEADY.format(name="big", version=1))
        (root / "run").chmod(0o755)
        (root / "blob").write_bytes(os.urandom(2_000_000))
        build(root, name="big", version=1, key=key, out=tmp_path / "big.bundle",
              min_runner_version="0.0.1")
        done = offer(api, "n-cut", publish(api, tmp_path / "big.bundle"), probation_s=0.5)
        assert done["state"] == "succeeded", done
        assert proxy.cut == 1
        ranged = [h for h in proxy.heads if "/file " in h and "range: bytes=" in h.lower()]
        assert len(ranged) == 1, proxy.heads
        live = node.state_dir / "bundles" / "big"
        (active,) = [p for p in live.iterdir() if p.name.startswith("v1-")]
        assert (active / "blob").read_bytes() == (root / "blob").read_bytes()
    finally:
        node.cleanup()
        proxy.close()


def _rewrite(src: Path, out: Path, manifest_bytes: bytes | None = None,
             signatures: Any = None) -> Path:
    """``src`` with its manifest bytes or signatures replaced, payload untouched: what a
    compromised controller (or a mirror) could serve."""
    from tether.cli.bundle import write_bundle
    from tether.protocol.bundle import open_payload, read_bundle

    with src.open("rb") as f:
        parts = read_bundle(f)
        payload = open_payload(f, parts)
        write_bundle(out, manifest_bytes if manifest_bytes is not None else parts.manifest_bytes,
                     signatures if signatures is not None else parts.signatures,
                     payload, parts.payload_size)
    return out


@pytest.mark.parametrize("case", ["tampered", "wrong_key", "expired", "runner_too_new"])
def test_a_bundle_the_controller_publishes_is_still_refused_by_the_node_with_its_reason(
        controller: ControllerProc, node: NodeProc, tmp_path: Path, case: str) -> None:
    """Issue 15 "Done when": each rejected before anything runs, the reason reported; the
    controller takes each of these files (it checks layout and hashes, never signatures:
    the node's trust is the publisher's key, not the controller)."""
    from datetime import UTC, datetime, timedelta

    from tether.protocol.bundle import Signature, read_bundle

    api = controller.api()
    key, pub = make_key(tmp_path, "pub")
    other, _ = make_key(tmp_path, "other")
    trust(node.state_dir, load_public_key(pub), None)
    good = bundle(tmp_path, key, "web", 1, STEADY)
    with good.open("rb") as f:
        parts = read_bundle(f)
    if case == "tampered":  # one byte of the signed manifest: the expiry ten years on
        raw = parts.manifest_bytes
        at = raw.index(b'"expires_at":"') + len(b'"expires_at":"') + 2
        path = _rewrite(good, tmp_path / "tampered.bundle",
                        manifest_bytes=raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:])
        code = "bad_signature"
    elif case == "wrong_key":  # the trusted key's id on another key's signature
        from tether.protocol.bundle import signed_message

        forged = Signature(parts.signatures[0].key_id,
                           other.sign(signed_message(parts.manifest_bytes)))
        path = _rewrite(good, tmp_path / "forged.bundle", signatures=(forged,))
        code = "bad_signature"
    else:
        root = tmp_path / f"src-{case}"
        root.mkdir()
        (root / "tether-app.toml").write_text('argv = ["./run"]\n')
        (root / "run").write_text(STEADY.format(name="web", version=1))
        (root / "run").chmod(0o755)
        path = tmp_path / f"{case}.bundle"
        if case == "expired":
            build(root, name="web", version=1, key=key, out=path, min_runner_version="0.0.1",
                  now=datetime.now(UTC) - timedelta(days=3), expires_in_days=1)
            code = "bundle_expired"
        else:
            build(root, name="web", version=1, key=key, out=path, min_runner_version="99.0.0")
            code = "runner_too_old"
    done = offer(api, "n-b", publish(api, path))
    assert done["state"] == "failed" and done["error"].startswith(f"rejected: {code}: "), done
    assert "web" not in api.node("n-b")["apps"]
    assert not any(node.state_dir.joinpath("bundles", "web").glob("v*"))
    reported = wait_until(lambda: api.node("n-b")["bundles"].get("web"), what="bundles")
    assert reported["state"] == "rejected" and reported.get("code", code) == code, reported

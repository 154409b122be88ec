"""The execution plane end to end: live output, pause/resume/cancel pushed to a running
process group, the offline policy, resources, and an output flood that stays bounded."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tether.protocol.frames import TERMINAL_STATES

from ..helpers import Api, ControllerProc, NodeProc, tether_cmd, wait_until

pytestmark = pytest.mark.both_backends  # tests/e2e/conftest.py: SQLite, PostgreSQL + NATS


def logs(api: Api, command_id: str) -> list[dict[str, object]]:
    return api.get(f"/api/v1/commands/{command_id}/logs").json()["items"]  # type: ignore[no-any-return]


def proc_state(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return None
    return None


def finished(api: Api, command_id: str) -> dict[str, object]:
    return wait_until(lambda: (c := api.command(command_id))["state"] in TERMINAL_STATES
                      and c, timeout_s=60, what=f"{command_id} to finish")


def test_output_reaches_the_controller_while_the_command_still_runs(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-live")
    api = controller.api()
    cmd = api.submit("n-live", "exec", {"argv": [
        "sh", "-c", "for i in $(seq 1 20); do echo line $i; sleep 0.2; done"]})
    first = wait_until(lambda: [i for i in logs(api, cmd["command_id"])
                                if "line 1\n" in str(i["data"])], what="the first line")
    assert first
    # 3.8 s of output remain: it shows running before it ends (its status travels apart
    # from its output, so the first line may be stored a moment before the status)
    wait_until(lambda: api.command(cmd["command_id"])["state"] == "running", timeout_s=3,
               what="the command shown running")
    done = finished(api, cmd["command_id"])
    assert done["state"] == "succeeded"
    text = "".join(str(i["data"]) for i in logs(api, cmd["command_id"]))
    assert text == "".join(f"line {i}\n" for i in range(1, 21))


def test_pause_stops_the_process_group_and_resume_continues_it(
        controller: ControllerProc, make_node: Callable[..., NodeProc], tmp_path: Path) -> None:
    make_node("n-pause")
    api = controller.api()
    pidfile = tmp_path / "pid"
    cmd = api.submit("n-pause", "exec", {"argv": [
        "sh", "-c", f"echo $$ > {pidfile}; i=0; while true; do echo $i; i=$((i+1)); "
                    "sleep 0.05; done"], "timeout_s": 120})
    cid = cmd["command_id"]
    wait_until(lambda: len(logs(api, cid)) >= 3, what="some output")
    pid = int(pidfile.read_text())
    assert api.post(f"/api/v1/commands/{cid}/pause").status_code == 202
    wait_until(lambda: api.command(cid)["state"] == "paused", what="paused")
    assert proc_state(pid) == "T"  # stopped by SIGSTOP: it cannot print
    resumed = api.post(f"/api/v1/commands/{cid}/resume")
    assert resumed.status_code == 202
    wait_until(lambda: api.command(cid)["state"] == "running", what="running again")
    seen = len(logs(api, cid))
    wait_until(lambda: len(logs(api, cid)) > seen, what="output after resume")
    assert proc_state(pid) in ("S", "R")
    assert api.post(f"/api/v1/commands/{cid}/cancel").status_code == 202
    assert finished(api, cid)["state"] == "cancelled"
    states: list[str] = []
    for event in api.command(cid)["timeline"]:  # "... requested" entries repeat a state
        if not states or states[-1] != event["state"]:
            states.append(event["state"])
    assert states == ["queued", "delivered", "running", "paused", "running", "cancelled"]


def test_cancel_ends_the_whole_process_group_and_leaves_no_orphan(
        controller: ControllerProc, make_node: Callable[..., NodeProc], tmp_path: Path) -> None:
    make_node("n-cancel")
    api = controller.api()
    pidfile = tmp_path / "pids"
    cmd = api.submit("n-cancel", "exec", {"argv": [
        "sh", "-c", f"sleep 60 & echo $! >> {pidfile}; sleep 60 & echo $! >> {pidfile}; "
                    f"echo $$ >> {pidfile}; wait"]})
    cid = cmd["command_id"]
    wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 3,
               what="the process tree")
    pids = [int(p) for p in pidfile.read_text().split()]
    assert api.post(f"/api/v1/commands/{cid}/cancel").status_code == 202
    assert finished(api, cid)["state"] == "cancelled"
    wait_until(lambda: all(proc_state(p) in (None, "Z") for p in pids),
               what="every process of the group gone")
    leaders = {os.getpgid(p) for p in pids if proc_state(p) not in (None, "Z")}
    assert not leaders


def test_pause_and_resume_are_refused_in_the_wrong_state(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-ctl-state", start=False)
    api = controller.api()
    queued = api.submit("n-ctl-state", "exec", {"argv": ["true"]})
    cid = queued["command_id"]
    pause = api.post(f"/api/v1/commands/{cid}/pause")
    assert pause.status_code == 409
    assert pause.json()["error"]["code"] == "command_not_running"
    resume = api.post(f"/api/v1/commands/{cid}/resume")
    assert resume.status_code == 409
    assert resume.json()["error"]["code"] == "command_not_paused"


def test_offline_fail_refuses_at_once_and_queue_holds_the_command(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-policy", start=False)
    api = controller.api()
    refused = api.post("/api/v1/nodes/n-policy/commands",
                       json={"kind": "exec", "args": {"argv": ["true"]}, "offline": "fail"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "node_offline"
    assert api.get("/api/v1/commands", params={"node_id": "n-policy"}).json()["items"] == []
    bad = api.post("/api/v1/nodes/n-policy/commands",
                   json={"kind": "exec", "args": {"argv": ["true"]}, "offline": "maybe"})
    assert bad.status_code == 400
    held = api.submit("n-policy", "exec", {"argv": ["true"]}, offline="queue")
    node.start()
    assert finished(api, held["command_id"])["state"] == "succeeded"
    ok = api.post("/api/v1/nodes/n-policy/commands",
                  json={"kind": "diag.ping", "offline": "fail"})
    assert ok.status_code == 202


def test_the_node_reports_its_resources(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-res")
    api = controller.api()
    res = wait_until(lambda: api.node("n-res")["resources"], what="resources")
    assert res["memory"]["total"] > 0 and 0 <= res["memory"]["percent"] <= 100
    assert res["disk"]["total"] >= res["disk"]["free"] > 0
    assert res["processes"] > 0 and res["cpus"] >= 1
    show = subprocess.run(tether_cmd("nodes", "show", "--url", controller.url, "--token",
                                     controller.token, "n-res"),
                          capture_output=True, text=True, timeout=30)
    assert "resources     cpu" in show.stdout


def test_an_output_flood_neither_blocks_the_node_nor_grows_controller_storage(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-flood")
    api = controller.api()
    flood = api.submit("n-flood", "exec", {"argv": ["sh", "-c", "yes | head -c 100M"]})
    ping = api.submit("n-flood", "diag.ping")  # the runtime stays responsive meanwhile
    assert finished(api, ping["command_id"])["state"] == "succeeded"
    done = finished(api, flood["command_id"])
    assert done["state"] == "succeeded"
    limit = 16 << 20  # the controller's default --max-log-bytes-per-command
    assert done["log_bytes"] == limit  # a prefix, cut exactly at the cap
    assert done["log_dropped_bytes"] > 0
    # backpressure: nothing is lost on the way, so every byte is either kept or counted
    assert done["log_bytes"] + done["log_dropped_bytes"] == 100 * 2**20


def test_tether_logs_prints_and_follows(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-logs")
    api = controller.api()
    cmd = api.submit("n-logs", "exec", {"argv": ["sh", "-c",
                                                 "echo one; sleep 0.3; echo two; exit 4"]})
    flags = ["--url", controller.url, "--token", controller.token]
    followed = subprocess.run(tether_cmd("logs", *flags, "--follow", cmd["command_id"]),
                              capture_output=True, text=True, timeout=60)
    assert (followed.returncode, followed.stdout) == (4, "one\ntwo\n")
    printed = subprocess.run(tether_cmd("logs", *flags, cmd["command_id"]),
                             capture_output=True, text=True, timeout=60)
    assert (printed.returncode, printed.stdout) == (0, "one\ntwo\n")


def test_a_node_policy_rejects_with_the_rule_named_and_is_visible_on_the_controller(
        controller: ControllerProc, tmp_path: Path) -> None:
    import json

    node = NodeProc(tmp_path / "n-pol", "n-pol")
    node.enroll(controller)
    (node.state_dir / "policy.json").write_text(json.dumps({
        "exec_allow": ["echo", "head"], "deny_kinds": ["update.now"],
        "max_output_bytes": 1000, "max_timeout_s": 60}))
    node.start()
    try:
        api = controller.api()
        wait_until(lambda: api.liveness("n-pol") == "online", what="online")
        view = wait_until(lambda: (v := api.node("n-pol"))["policy"] and v,
                          what="the policy in the node object")
        assert view["policy"]["exec_allow"] == ["echo", "head"]
        assert f"policy:{view['policy']['digest']}" in view["capabilities"]

        shell = api.submit("n-pol", "exec", {"argv": ["sh", "-c", "id"]})
        rejected = finished(api, shell["command_id"])
        assert rejected["state"] == "rejected"
        assert rejected["error"] == "rejected by policy: executable 'sh' is not in exec_allow"
        denied = api.submit("n-pol", "update.now")
        assert finished(api, denied["command_id"])["error"] == \
            "rejected by policy: kind 'update.now' is in deny_kinds"
        too_long = api.submit("n-pol", "exec", {"argv": ["echo"], "timeout_s": 600})
        assert "max_timeout_s" in str(finished(api, too_long["command_id"])["error"])

        capped = api.submit("n-pol", "exec", {"argv": ["head", "-c", "5000", "/dev/zero"]})
        done = finished(api, capped["command_id"])
        assert done["state"] == "succeeded"
        items = logs(api, capped["command_id"])
        out = sum(len(str(i["data"])) for i in items if i["source"] == "stdout")
        assert out == 1000
        notice = [i for i in items if i["source"] == "runtime"]
        assert notice and "4000 bytes of output dropped" in str(notice[0]["data"])
    finally:
        node.cleanup()


def test_a_policy_file_that_does_not_validate_stops_the_runtime_with_its_reason(
        controller: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-badpol", "n-badpol")
    node.enroll(controller)
    (node.state_dir / "policy.json").write_text('{"allow": ["exec"]}')
    out = subprocess.run(tether_cmd("node", "run", "--state-dir", str(node.state_dir)),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "unknown field(s) ['allow']" in out.stderr


async def test_a_published_monitor_packet_reaches_ws_subscribers_and_the_api(
        controller: ControllerProc, tmp_path: Path) -> None:
    import asyncio
    import json

    import httpx
    from websockets.asyncio.client import connect

    node = NodeProc(tmp_path / "n-mon", "n-mon")
    node.enroll(controller)
    node.start()
    try:
        api = controller.api()
        await asyncio.to_thread(wait_until, lambda: api.liveness("n-mon") == "online")
        url = controller.url.replace("http", "ws", 1) + "/ws"
        async with asyncio.timeout(30), connect(url, subprotocols=["tether.v1.json"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"t": "hello", "b": {"token": controller.token}}))
            assert json.loads(await ws.recv())["t"] == "welcome"
            await ws.send(json.dumps({"t": "subscribe", "b": {"topics": ["monitor:n-mon"]}}))
            snapshot = json.loads(await ws.recv())
            assert snapshot["t"] == "snapshot" and snapshot["b"]["data"] == {"topics": {}}
            assert json.loads(await ws.recv())["t"] == "subscribed"
            out = await asyncio.to_thread(subprocess.run, tether_cmd(
                "node", "publish", "--state-dir", str(node.state_dir), "--topic", "temp",
                "--json", '{"celsius": 21.5}'), capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            while True:
                frame = json.loads(await ws.recv())
                if frame["t"] == "event" and frame["b"]["kind"] == "monitor.packet":
                    break
        packet = frame["b"]["data"]
        assert (packet["topic"], packet["data"], packet["node_id"]) == (
            "temp", {"celsius": 21.5}, "n-mon")
        kept = api.get("/api/v1/nodes/n-mon/monitor", params={"topic": "temp"}).json()
        assert kept["topics"]["temp"][-1]["data"] == {"celsius": 21.5}
        status_url = (node.state_dir / "runtime.status.url").read_text().strip()
        bad = httpx.post(status_url + "/publish", json={"topic": "", "data": {}}, timeout=5)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    finally:
        node.cleanup()

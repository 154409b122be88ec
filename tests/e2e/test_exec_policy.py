"""Issue 11 item 7 through a real node: with ``exec_allow: [uptime, echo, sleep]`` the
policy judges what will actually run, whatever the command's env, cwd, argv[0] or timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.protocol.frames import TERMINAL_STATES

from ..helpers import Api, ControllerProc, NodeProc, wait_until


@pytest.fixture
def walled(controller: ControllerProc, tmp_path: Path) -> Iterator[Api]:
    node = NodeProc(tmp_path / "n-wall", "n-wall")
    node.enroll(controller)
    (node.state_dir / "policy.json").write_text(json.dumps({
        "exec_allow": ["uptime", "echo", "sleep"], "max_timeout_s": 1}))
    node.start()
    try:
        api = controller.api()
        wait_until(lambda: api.liveness("n-wall") == "online", what="online")
        yield api
    finally:
        node.cleanup()


def run(api: Api, args: dict[str, Any]) -> dict[str, Any]:
    cid = api.submit("n-wall", "exec", args)["command_id"]
    return wait_until(lambda: (c := api.command(cid))["state"] in TERMINAL_STATES and c,
                      timeout_s=30, what=f"{cid} to finish")


def planted(directory: Path, name: str, marker: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\ntouch {marker}\n")
    path.chmod(0o755)
    return path


def test_a_planted_binary_on_a_sent_path_does_not_run(walled: Api, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    planted(tmp_path / "evil", "uptime", marker)
    done = run(walled, {"argv": ["uptime"], "env": {"PATH": str(tmp_path / "evil")}})
    assert (done["state"], done["error"]) == ("rejected", "rejected by policy: env PATH may "
                                              "change what runs; allow it with exec_env_allow")
    assert not marker.exists()


def test_ld_preload_is_refused(walled: Api, tmp_path: Path) -> None:
    done = run(walled, {"argv": ["echo", "hi"], "env": {"LD_PRELOAD": str(tmp_path / "x.so")}})
    assert (done["state"], done["error"]) == ("rejected", "rejected by policy: env LD_PRELOAD "
                                              "may change what runs; allow it with "
                                              "exec_env_allow")


def test_sleep_without_a_timeout_stops_at_max_timeout_s(walled: Api) -> None:
    started = time.monotonic()
    done = run(walled, {"argv": ["sleep", "5"]})
    assert (done["state"], done["error"]) == ("failed", "timeout after 1s")
    assert time.monotonic() - started < 4.5


def test_a_relative_argv0_in_a_planted_cwd_does_not_run(walled: Api, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    planted(tmp_path / "work", "uptime", marker)
    done = run(walled, {"argv": ["./uptime"], "cwd": str(tmp_path / "work")})
    assert (done["state"], done["error"]) == (
        "rejected", "rejected by policy: executable './uptime' is not in exec_allow")
    assert not marker.exists()


def test_a_dotted_path_to_an_allowed_program_runs_it(walled: Api) -> None:
    done = run(walled, {"argv": ["/tmp/../bin/echo", "hi"]})
    assert done["state"] == "succeeded"
    items = walled.get(f"/api/v1/commands/{done['command_id']}/logs").json()["items"]
    assert "".join(str(i["data"]) for i in items) == "hi\n"

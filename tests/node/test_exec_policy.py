"""The exec runner runs the plan the policy judged (issue 11 item 7), on real processes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tether.node.backends.base import ProcessHandle, ProcessSpec
from tether.node.backends.native import NativeBackend
from tether.node.executors.exec import ExecRunner
from tether.node.logbuf import LogBuffer
from tether.node.policy import Policy

WALLED = Policy.from_dict({"exec_allow": ["uptime", "echo", "sleep"], "max_timeout_s": 0.5})


def runner(args: dict[str, object], policy: Policy = WALLED,
           logs: LogBuffer | None = None) -> ExecRunner:
    return ExecRunner("c1", args, logs=logs if logs is not None else LogBuffer(),
                      on_output=lambda: None, kill_grace_s=1.0, policy=policy)


async def test_sleep_without_a_timeout_is_stopped_at_max_timeout_s() -> None:
    started = time.monotonic()
    outcome = await runner({"argv": ["sleep", "5"]}).run()
    assert (outcome.state, outcome.error) == ("failed", "timeout after 0.5s")
    assert time.monotonic() - started < 3


async def test_a_path_override_never_reaches_the_process(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "uptime").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (evil / "uptime").chmod(0o755)
    outcome = await runner({"argv": ["uptime"], "env": {"PATH": str(evil)}}).run()
    assert outcome.state == "failed"
    assert outcome.error == ("rejected by policy: env PATH may change what runs; "
                             "allow it with exec_env_allow")
    assert not marker.exists()


async def test_the_allowed_program_runs_by_its_resolved_path(tmp_path: Path) -> None:
    logs = LogBuffer()
    outcome = await runner({"argv": ["/tmp/../bin/echo", "hi"]}, logs=logs).run()
    assert outcome.state == "succeeded"
    assert b"".join(c.data for c in logs.take()) == b"hi\n"


async def test_a_nul_in_argv_fails_the_command_and_not_the_runtime() -> None:
    outcome = await runner({"argv": ["echo", "a\0b"]}, policy=Policy()).run()
    assert (outcome.state, outcome.error) == (
        "failed", "rejected by policy: argv must not contain NUL characters")


async def test_a_symlink_swapped_between_judgement_and_spawn_does_not_change_what_runs(
        tmp_path: Path) -> None:
    # exec_allow judges /tmp/.../echo -> /usr/bin/echo as echo; whoever can write that
    # directory then points the link at sh before execve. The race is won every time here.
    link = tmp_path / "echo"
    link.symlink_to(shutil.which("echo") or "/bin/echo")

    class Swapping(NativeBackend):
        async def spawn(self, spec: ProcessSpec) -> ProcessHandle:
            link.unlink()
            link.symlink_to(shutil.which("sh") or "/bin/sh")
            return await super().spawn(spec)

    logs = LogBuffer()
    outcome = await ExecRunner("c1", {"argv": [str(link), "-c", "echo PWNED"]}, logs=logs,
                               on_output=lambda: None, kill_grace_s=1.0, policy=WALLED,
                               backend=Swapping()).run()
    assert outcome.state == "succeeded", outcome
    assert b"".join(c.data for c in logs.take()) == b"-c echo PWNED\n"

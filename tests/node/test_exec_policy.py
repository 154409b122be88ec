"""The exec runner runs the plan the policy judged (issue 11 item 7), on real processes."""

from __future__ import annotations

import time
from pathlib import Path

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

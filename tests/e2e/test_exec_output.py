"""`tether exec` output end to end (issue 11, item 9): an attached operator gets every byte in
order, drops are said on stderr with exit code 3, and binary output comes back byte-exact."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ..helpers import FAST, ControllerProc, NodeProc, tether_cmd, wait_until

pytestmark = pytest.mark.both_backends  # tests/e2e/conftest.py: SQLite, PostgreSQL + NATS

EXIT_OUTPUT_DROPPED = 3


def run_exec(controller: ControllerProc, node_id: str, *argv: str,
             timeout_s: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(tether_cmd("exec", "--url", controller.url, "--token",
                                     controller.token, node_id, "--", *argv),
                          capture_output=True, timeout=timeout_s)


def test_seq_of_a_quarter_million_lines_comes_back_whole_and_in_order(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-seq")
    out = run_exec(controller, "n-seq", "seq", "1", "250000")
    assert out.stderr == b""
    assert out.returncode == 0
    lines = out.stdout.decode().split("\n")
    assert lines[-1] == ""
    assert lines[:-1] == [str(i) for i in range(1, 250001)]


def test_random_bytes_and_a_split_utf8_character_come_back_byte_exact(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-bin")
    # 16 bytes that are not UTF-8 (0xff, 0xc3 alone, a lone continuation byte, NUL)
    raw = bytes([0xff, 0xfe, 0x00, 0xc3, 0x41, 0x80, 0x9f, 0xed, 0xa0, 0x80, 0x0a, 0xf0,
                 0x28, 0x8c, 0xbc, 0x01])
    printf = "".join(f"\\{b:03o}" for b in raw)
    out = run_exec(controller, "n-bin", "printf", printf)
    assert (out.returncode, out.stdout, out.stderr) == (0, raw, b"")
    # "é" (c3 a9) with a pause between its two bytes: the node flushes the partial line
    # after 50 ms, so the character is split across two log chunks.
    split = run_exec(controller, "n-bin", "sh", "-c",
                     "printf 'caf\\303'; sleep 0.3; printf '\\251\\n'")
    assert (split.returncode, split.stdout, split.stderr) == (0, "café\n".encode(), b"")


def test_output_past_the_policy_cap_is_counted_on_stderr_with_exit_code_3(
        controller: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-cap", "n-cap")
    node.enroll(controller)
    (node.state_dir / "policy.json").write_text(json.dumps({"max_output_bytes": 1000}))
    node.start()
    try:
        out = run_exec(controller, "n-cap", "head", "-c", "5000", "/dev/zero")
        assert out.returncode == EXIT_OUTPUT_DROPPED
        assert out.stdout == b"\0" * 1000
        last = out.stderr.decode().splitlines()[-1]
        assert "4000 bytes of output were dropped" in last
    finally:
        node.cleanup()


def test_output_past_the_controllers_per_command_cap_is_counted_and_a_failure_keeps_its_code(
        make_controller: Callable[..., ControllerProc], tmp_path: Path) -> None:
    ctl = make_controller("ctl-cap", extra=[*FAST, "--max-log-bytes-per-command", "100000"])
    node = NodeProc(tmp_path / "n-ccap", "n-ccap")
    try:
        node.enroll(ctl)
        node.start()  # online first: exec to an offline node says so on stderr
        wait_until(lambda: ctl.api().liveness("n-ccap") == "online", what="n-ccap online")
        out = run_exec(ctl, "n-ccap", "seq", "1", "100000")  # 588,895 bytes
        assert out.returncode == EXIT_OUTPUT_DROPPED, out.stderr
        whole = "".join(f"{i}\n" for i in range(1, 100001)).encode()
        assert out.stdout == whole[:100000]  # a prefix, in order, cut at the cap
        stderr = out.stderr.decode().splitlines()
        assert len(stderr) == 1
        assert f"{588895 - len(out.stdout)} bytes of output were dropped" in stderr[0]
        failed = run_exec(ctl, "n-ccap", "sh", "-c", "seq 1 100000; exit 5")
        assert failed.returncode == 5
        assert "bytes of output were dropped" in failed.stderr.decode()
        # nobody attached: the cap still drops, and `tether logs` says so afterwards
        flags = ["--url", ctl.url, "--token", ctl.token]
        queued = subprocess.run(tether_cmd("exec", *flags, "--no-wait", "n-ccap", "--",
                                           "seq", "1", "100000"),
                                capture_output=True, text=True, timeout=60)
        command_id = queued.stdout.strip()
        followed = subprocess.run(tether_cmd("logs", *flags, "--follow", command_id),
                                  capture_output=True, timeout=60)
        assert followed.returncode == EXIT_OUTPUT_DROPPED
        assert followed.stdout == out.stdout  # the same prefix, kept in the store
        assert followed.stderr.decode().count("\n") == 1
        assert f"{588895 - len(out.stdout)} bytes of output were dropped" in \
            followed.stderr.decode()
    finally:
        node.cleanup()


def test_a_cli_cut_off_from_the_live_stream_fills_in_over_rest_and_loses_nothing(
        make_controller: Callable[..., ControllerProc], tmp_path: Path) -> None:
    # the CLI is cut off (4429) again and again
    ctl = make_controller("ctl-slow", extra=[*FAST, "--ws-max-queue", "2"])
    node = NodeProc(tmp_path / "n-cut", "n-cut")
    go = tmp_path / "go"
    try:
        node.enroll(ctl)
        node.start()
        # The output starts once the CLI follows the live stream (a /ws subscriber): a seq
        # done before it attached would all come over REST, with nothing live to cut off.
        proc = subprocess.Popen(tether_cmd(
            "exec", "--url", ctl.url, "--token", ctl.token, "n-cut", "--", "sh", "-c",
            f"while [ ! -e {go} ]; do sleep 0.05; done; seq 1 200000"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            api = ctl.api()
            wait_until(lambda: api.get("/api/v1/diag").json()["ws"]["subscribers"] >= 1,
                       what="the CLI to follow the live stream")
            go.touch()
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # the node may not be online yet when exec submits: then exec says so, only that
        said = [line for line in stderr.decode().splitlines()
                if not line.startswith("n-cut is offline; the command is queued")]
        assert (proc.returncode, said) == (0, [])
        assert stdout == "".join(f"{i}\n" for i in range(1, 200001)).encode()
        diag = ctl.api().get("/api/v1/diag").json()
        assert diag["ws"]["cut_off_total"] >= 1  # it was cut off, and still got every line
    finally:
        node.cleanup()

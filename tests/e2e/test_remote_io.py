"""`tether exec` that behaves like ssh (issue 13): stdin streamed with its end, the remote exit
code (127 for a missing program), Ctrl-C interrupts and a second one (or --detach) detaches;
and `tether shell` through a real pty: prompt, echo, a window resize that reaches the remote
process, the exit code, and a policy that denies shells. Real controller and node processes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import termios
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.protocol.frames import TERMINAL_STATES

from ..helpers import ControllerProc, NodeProc, tether_cmd, wait_until

pytestmark = pytest.mark.both_backends  # tests/e2e/conftest.py: SQLite, PostgreSQL + NATS


def cli(controller: ControllerProc, *args: str) -> list[str]:
    verb, rest = args[0], args[1:]
    return tether_cmd(verb, "--url", controller.url, "--token", controller.token, *rest)


def run_exec(controller: ControllerProc, node_id: str, *argv: str, stdin: Any = None,
             input_: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cli(controller, "exec", node_id, "--", *argv), stdin=stdin,
                          input=input_, capture_output=True, timeout=120)


def latest_command(controller: ControllerProc, node_id: str) -> dict[str, Any]:
    items = controller.api().get("/api/v1/commands", params={"node_id": node_id}).json()
    return items["items"][0]  # type: ignore[no-any-return]


def test_piped_stdin_reaches_the_remote_cat_and_its_end_ends_it(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-cat")
    out = run_exec(controller, "n-cat", "cat", input_=b"hi\n")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"hi\n", b"")
    big = os.urandom(300_000)  # past every window on the way: flow control, not loss
    out = run_exec(controller, "n-cat", "sha256sum", input_=big)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0].decode() == hashlib.sha256(big).hexdigest()


def test_an_empty_stdin_is_an_immediate_end_of_file_and_a_file_streams_whole(
        controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    make_node("n-null")
    out = run_exec(controller, "n-null", "cat", stdin=subprocess.DEVNULL)
    assert (out.returncode, out.stdout) == (0, b"")
    data = tmp_path / "data.bin"
    data.write_bytes(b"line\n" * 50_000)  # a regular file cannot be polled: read as it is
    with data.open("rb") as f:
        out = run_exec(controller, "n-null", "wc", "-c", stdin=f)
    assert (out.returncode, out.stdout.strip()) == (0, b"250000"), out.stderr


def test_the_exit_code_is_the_remote_one_and_a_missing_program_is_127(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-code")
    assert run_exec(controller, "n-code", "sh", "-c", "exit 7",
                    stdin=subprocess.DEVNULL).returncode == 7
    missing = run_exec(controller, "n-code", "no-such-program-here", stdin=subprocess.DEVNULL)
    assert missing.returncode == 127
    assert b"not found: no-such-program-here" in missing.stderr
    cmd = latest_command(controller, "n-code")
    assert (cmd["state"], cmd["exit_code"]) == ("failed", 127)


def _running(controller: ControllerProc, node_id: str) -> dict[str, Any] | None:
    try:
        cmd = latest_command(controller, node_id)
    except IndexError:
        return None
    return cmd if cmd["state"] == "running" else None


def test_ctrl_c_interrupts_the_remote_command_which_ends_with_the_signal(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-int")
    proc = subprocess.Popen(cli(controller, "exec", "n-int", "--", "sleep", "100"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        cmd = wait_until(lambda: _running(controller, "n-int"), what="sleep running")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err  # 128 + SIGINT, as a local shell says
        done = controller.api().command(cmd["command_id"])
        assert done["state"] == "failed"
        assert done["exit_code"] == -signal.SIGINT
        assert "SIGINT" in done["error"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_detach_leaves_the_remote_command_running_and_says_how_to_follow_it(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-det")
    proc = subprocess.Popen(cli(controller, "exec", "--detach", "n-det", "--", "sleep", "100"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        cmd = wait_until(lambda: _running(controller, "n-det"), what="sleep running")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert f"tether logs -f {cmd['command_id']}" in err.decode()
        assert controller.api().command(cmd["command_id"])["state"] == "running"
        controller.api().post(f"/api/v1/commands/{cmd['command_id']}/cancel")
        wait_until(lambda: controller.api().command(cmd["command_id"])["state"]
                   in TERMINAL_STATES, what="cancelled")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- shell ----------------------------------------------------------------------------------------

class PtyCli:
    """``tether shell`` with a real pty as its terminal (its controlling terminal, so a
    window size set on the master reaches it as SIGWINCH, as in a terminal emulator)."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        self.set_size(24, 80)

        def take_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=take_terminal)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.seen = b""

    def set_size(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def read_some(self) -> bytes:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return b""
        self.seen += data
        return data

    def expect(self, pattern: bytes, *, timeout_s: float = 30.0) -> re.Match[bytes]:
        def found() -> re.Match[bytes] | None:
            self.read_some()
            return re.search(pattern, self.seen)
        match = wait_until(found, timeout_s=timeout_s, what=f"{pattern!r} in {self.seen[-300:]!r}")
        self.seen = self.seen[match.end():]
        return match

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def pty_shell(controller: ControllerProc) -> Iterator[Callable[..., PtyCli]]:
    made: list[PtyCli] = []

    def make(node_id: str, *argv: str) -> PtyCli:
        term = PtyCli(cli(controller, "shell", node_id, "--", *argv))
        made.append(term)
        return term

    yield make
    for term in made:
        term.close()


def test_a_shell_through_a_real_pty_prompts_echoes_resizes_and_returns_its_exit_code(
        controller: ControllerProc, make_node: Callable[..., NodeProc],
        pty_shell: Callable[..., PtyCli]) -> None:
    make_node("n-sh")
    term = pty_shell("n-sh", "sh", "-i")
    term.expect(rb"[#$] ")  # the remote prompt
    term.type(b"echo hel''lo-$((6*7))\r")
    term.expect(rb"echo hel''lo-\$\(\(6\*7\)\)")  # what was typed, echoed by the remote tty
    term.expect(rb"hello-42")  # and what it printed
    term.set_size(33, 111)  # SIGWINCH to the CLI -> resize -> TIOCSWINSZ on the node

    def new_size() -> bool:
        term.type(b"stty size\r")
        match = term.expect(rb"\n(\d+) (\d+)\r", timeout_s=10)
        return match.groups() == (b"33", b"111")
    wait_until(new_size, timeout_s=30, what="stty size to print 33 111")
    term.type(b"exit 3\r")
    assert term.proc.wait(timeout=30) == 3
    cmd = latest_command(controller, "n-sh")
    assert (cmd["kind"], cmd["state"], cmd["exit_code"]) == ("shell", "failed", 3)


def test_a_policy_that_denies_shells_refuses_one_and_the_cli_says_why(
        controller: ControllerProc, tmp_path: Path, pty_shell: Callable[..., PtyCli]) -> None:
    node = NodeProc(tmp_path / "n-noshell", "n-noshell")
    node.enroll(controller)
    (node.state_dir / "policy.json").write_text(json.dumps({"deny_kinds": ["shell"]}))
    node.start()
    try:
        wait_until(lambda: controller.api().liveness("n-noshell") == "online", what="online")
        term = pty_shell("n-noshell", "sh")
        term.expect(rb"kind 'shell' is in deny_kinds")
        assert term.proc.wait(timeout=30) == 1
        cmd = latest_command(controller, "n-noshell")
        assert (cmd["kind"], cmd["state"]) == ("shell", "rejected")
        # exec stays allowed: denying shells is its own decision
        assert run_exec(controller, "n-noshell", "true", stdin=subprocess.DEVNULL
                        ).returncode == 0
    finally:
        node.cleanup()


def test_a_shell_fed_from_a_pipe_runs_it_and_ends_with_the_pipe(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-pipe")
    out = subprocess.run(cli(controller, "shell", "n-pipe", "--", "sh"),
                         input=b"echo piped-$((2*3))\nexit 9\n", capture_output=True,
                         timeout=60)
    assert out.returncode == 9, out.stderr
    assert b"piped-6" in out.stdout

"""The exec runner on real child processes, and the class C log buffer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from tether.node.executors.exec import ExecRunner
from tether.node.logbuf import LogBuffer


async def until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` on the loop until it holds; fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def runner(args: dict[str, object], logs: LogBuffer | None = None,
           **kw: object) -> ExecRunner:
    return ExecRunner("c1", args, logs=logs if logs is not None else LogBuffer(),
                      on_output=lambda: None,
                      **kw)  # type: ignore[arg-type]


async def test_exec_streams_stdout_and_stderr_and_reports_the_exit_code() -> None:
    logs = LogBuffer()
    outcome = await runner({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]},
                           logs).run()
    assert (outcome.state, outcome.exit_code) == ("failed", 3)
    chunks = {c.source: c.data for c in logs.take()}
    assert chunks == {"stdout": b"out\n", "stderr": b"err\n"}


async def test_exec_runs_argv_without_a_shell() -> None:
    logs = LogBuffer()
    outcome = await runner({"argv": ["echo", "$HOME; rm -rf /"]}, logs).run()
    assert outcome.state == "succeeded"
    assert logs.take()[0].data == b"$HOME; rm -rf /\n"


async def test_a_missing_executable_fails_with_a_clear_error() -> None:
    outcome = await runner({"argv": ["definitely-not-a-binary"]}).run()
    assert outcome.state == "failed"
    assert outcome.error == "not found: definitely-not-a-binary"


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    outcome = await runner({"argv": ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"],
                            "timeout_s": 1.0}).run()  # time for sh to write the pid
    assert outcome.state == "failed" and "timeout" in (outcome.error or "")
    child = int(pidfile.read_text())

    def gone_or_zombie() -> bool:
        try:
            return "State:\tZ" in Path(f"/proc/{child}/status").read_text()
        except FileNotFoundError:
            return True

    # The grandchild got the group's signal too: it ends (on a loaded machine, a moment
    # after the runner returns), and is gone or a zombie being reaped.
    await until(gone_or_zombie)


async def test_cancel_stops_a_running_process() -> None:
    r = runner({"argv": ["sleep", "60"]})
    task = asyncio.create_task(r.run())
    await until(lambda: r.pid is not None)
    r.cancel()
    outcome = await task
    assert outcome.state == "cancelled"


async def test_env_and_cwd_are_applied(tmp_path: Path) -> None:
    logs = LogBuffer()
    outcome = await runner({"argv": ["sh", "-c", "echo $GREETING; pwd"],
                            "env": {"GREETING": "hello"}, "cwd": str(tmp_path)}, logs).run()
    assert outcome.state == "succeeded"
    assert b"".join(c.data for c in logs.take()) == f"hello\n{tmp_path}\n".encode()


def test_the_log_buffer_drops_the_oldest_and_says_how_many() -> None:
    logs = LogBuffer(max_chunks=3)
    for i in range(5):
        logs.add("c1", "stdout", f"line {i}\n".encode())
    chunks = logs.take()
    assert [c.seq for c in chunks] == [3, 4, 5]
    assert chunks[0].dropped == 2 and chunks[1].dropped == 0
    assert logs.dropped_total == 2
    logs.add("c1", "stdout", b"more\n")
    assert logs.take()[0].dropped == 0


def test_large_output_is_split_into_bounded_chunks() -> None:
    logs = LogBuffer(max_chunk_bytes=10)
    logs.add(None, "runtime", b"x" * 25)
    assert [len(c.data) for c in logs.take()] == [10, 10, 5]


async def test_pause_stops_the_group_and_cancel_still_ends_a_paused_process(
        tmp_path: Path) -> None:
    r = runner({"argv": ["sleep", "60"]}, kill_grace_s=5.0)
    task = asyncio.create_task(r.run())
    await until(lambda: r.pid is not None)
    assert r.pause() and r.paused
    status = Path(f"/proc/{r.pid}/status")
    await until(lambda: "State:\tT" in status.read_text())
    assert r.resume() and not r.paused
    assert r.pause()
    r.cancel()  # SIGTERM is paired with SIGCONT, so a stopped process still ends at once
    outcome = await asyncio.wait_for(task, timeout=4)
    assert outcome.state == "cancelled"


async def test_complete_lines_are_forwarded_together_and_a_trailing_partial_line_at_exit(
        ) -> None:
    logs = LogBuffer()
    outcome = await runner({"argv": ["printf", "a\\nb\\nc"]}, logs).run()
    assert outcome.state == "succeeded"
    assert [c.data for c in logs.take()] == [b"a\nb\n", b"c"]


async def test_the_runner_works_through_any_runtime_backend() -> None:
    """The seam a docker backend plugs into: the runner only sees spawn/handle."""
    from tether.node.backends import NativeBackend, ProcessHandle, ProcessSpec

    spawned: list[ProcessSpec] = []

    class Wrapping:  # e.g. what a container backend does: run argv inside something else
        name = "wrapping"

        async def spawn(self, spec: ProcessSpec) -> ProcessHandle:
            spawned.append(spec)
            wrapped = ProcessSpec(argv=("env", "WRAPPED=1", *spec.argv), env=spec.env,
                                  cwd=spec.cwd)
            return await NativeBackend().spawn(wrapped)

    logs = LogBuffer()
    r = ExecRunner("c1", {"argv": ["sh", "-c", "echo $WRAPPED"]}, logs=logs,
                   on_output=lambda: None, backend=Wrapping())
    outcome = await r.run()
    assert outcome.state == "succeeded"
    assert [c.data for c in logs.take()] == [b"1\n"]
    assert spawned[0].argv == ("sh", "-c", "echo $WRAPPED")

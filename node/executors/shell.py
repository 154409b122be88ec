"""The ``shell`` command kind: a program (the node's login shell by default) on a pty,
driven over the command's io stream (docs/protocol.md "Interactive io").

The process runs in its own session with the pty as its controlling terminal, so the
terminal's line discipline does what a terminal does: Ctrl-C typed by the operator is a
SIGINT to the foreground job, ``io.resize`` is ``TIOCSWINSZ`` and the kernel's SIGWINCH.
Its output goes as ``io.output`` (never stored: what a terminal shows is not a log), and
its start and end are ordinary class A statuses, so the exit code is durable.

Rule 1: what runs is what the policy judged (``Policy.plan_exec`` on the shell's argv, env
and cwd), as for ``exec``; a ``shell`` kind the policy denies never gets here.
Rule 2: the pty is read only while the operator's window has room (``IoChannel.
write_output`` waits), so a program that writes fast blocks on its terminal instead of
filling memory anywhere on the way.
Rule 3: before the runner reports the end, the last output is sent and acked (at most
``FLUSH_S``), so the operator sees it before the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Mapping
from typing import Any

from ..iochannel import IoChannel
from ..policy import Policy, Refused, shell_exec_args
from .exec import ExecOutcome

READ_CHUNK = 16 * 1024
DRAIN_S = 2.0  # after exit, how long to read a terminal held open by background jobs
FLUSH_S = 5.0
def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:  # pragma: no cover - runs in the child, before exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ShellRunner:
    """One shell (module docstring). Same surface as ExecRunner for the runtime's controls:
    ``cancel``, ``pause``, ``resume``, ``signal``, plus ``resize``."""

    def __init__(self, command_id: str, args: Mapping[str, Any], *, io: IoChannel,
                 policy: Policy | None = None, kill_grace_s: float = 5.0) -> None:
        self.command_id = command_id
        self.args = args
        self.io = io
        self.policy = policy or Policy()
        self.kill_grace_s = kill_grace_s
        self.pid: int | None = None
        self.paused = False
        self.spawned = asyncio.Event()
        self._master: int | None = None
        self._stop = asyncio.Event()
        self._stop_as: ExecOutcome | None = None

    # -- controls ------------------------------------------------------------------------------

    def cancel(self, outcome: ExecOutcome | None = None) -> None:
        self._stop_as = outcome or ExecOutcome("cancelled", error="cancelled by operator")
        self._stop.set()

    def _group(self, sig: signal.Signals) -> bool:
        if self.pid is None:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        return True

    def pause(self) -> bool:
        self.paused = self._group(signal.SIGSTOP)
        return self.paused

    def resume(self) -> bool:
        self.paused = False
        return self._group(signal.SIGCONT)

    def signal(self, name: str) -> bool:
        return self._group(signal.Signals[f"SIG{name}"])

    def resize(self, rows: int, cols: int) -> bool:
        if self._master is None:
            return False
        with contextlib.suppress(OSError):
            set_size(self._master, rows, cols)
        return True

    # -- run -----------------------------------------------------------------------------------

    async def run(self) -> ExecOutcome:
        try:
            return await self._run()
        finally:
            self.spawned.set()
            if self._master is not None:
                os.close(self._master)
                self._master = None

    async def _run(self) -> ExecOutcome:
        try:
            plan = self.policy.plan_exec(shell_exec_args(self.args))
        except Refused as exc:
            return ExecOutcome("failed", error=f"rejected by policy: {exc.message}")
        master, slave = os.openpty()
        self._master = master
        rows, cols = self.args.get("rows") or 24, self.args.get("cols") or 80
        set_size(slave, int(rows), int(cols))
        try:
            # The standard library's fork (not the event loop's: uvloop runs preexec_fn
            # before the child's setsid) makes the pty the child's controlling terminal:
            # dup2 to 0/1/2, setsid, then TIOCSCTTY. Forked and waited for in a thread.
            proc = await asyncio.to_thread(functools.partial(
                subprocess.Popen, plan.argv, stdin=slave, stdout=slave, stderr=slave,
                cwd=plan.cwd, env={**os.environ, **plan.env}, start_new_session=True,
                executable=plan.executable, preexec_fn=_take_terminal))
        except FileNotFoundError:
            return ExecOutcome("failed", exit_code=127, error=f"not found: {plan.argv[0]}")
        except PermissionError:
            return ExecOutcome("failed", exit_code=126,
                               error=f"permission denied: {plan.argv[0]}")
        except (OSError, subprocess.SubprocessError) as exc:
            return ExecOutcome("failed", error=f"cannot start {plan.argv[0]}: {exc}")
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.pid = proc.pid
        self.spawned.set()
        self.io.on_lease_lost = lambda: self.cancel(ExecOutcome(
            "failed", error="hung up: the operator went away"))
        pump = asyncio.create_task(self._pump(master))
        tasks = [asyncio.create_task(self._feed(master)), asyncio.create_task(self.io.run())]
        waiter = asyncio.create_task(asyncio.to_thread(proc.wait))
        stopper = asyncio.create_task(self._stop.wait())
        outcome: ExecOutcome | None = None
        try:
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED,
                                         timeout=plan.timeout_s)
            if waiter not in done:
                outcome = self._stop_as if stopper in done else ExecOutcome(
                    "failed", error=f"timeout after {plan.timeout_s:g}s")
                await self._terminate(waiter)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S):
                    await asyncio.shield(pump)
            await self.io.flushed(FLUSH_S)
        finally:
            for task in (pump, *tasks, waiter, stopper):
                task.cancel()
            await asyncio.gather(pump, *tasks, waiter, stopper, return_exceptions=True)
            if proc.returncode is None:
                self._group(signal.SIGKILL)
        code = proc.returncode
        if outcome is not None:
            return ExecOutcome(outcome.state, exit_code=code, error=outcome.error)
        if code == 0:
            return ExecOutcome("succeeded", exit_code=0)
        if code is not None and code < 0:
            return ExecOutcome("failed", exit_code=code,
                               error=f"killed by signal {signal.Signals(-code).name}")
        return ExecOutcome("failed", exit_code=code, error=f"exit code {code}")

    async def _terminate(self, waiter: asyncio.Task[int]) -> None:
        """A hang-up, as a terminal that goes away: SIGHUP (and SIGTERM) to the group,
        SIGKILL after the grace period."""
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGCONT):
            self._group(sig)
        try:
            async with asyncio.timeout(self.kill_grace_s):
                await asyncio.shield(waiter)
        except TimeoutError:
            self._group(signal.SIGKILL)
            await asyncio.shield(waiter)

    async def _pump(self, fd: int) -> None:
        """pty output -> io.output, reading only while there is room (Rule 2). Ends at
        EIO: every process holding the terminal is gone."""
        loop = asyncio.get_running_loop()
        while True:
            readable = asyncio.Event()
            loop.add_reader(fd, readable.set)  # level-triggered: removed while we wait
            try:
                await readable.wait()
            finally:
                loop.remove_reader(fd)
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            await self.io.write_output(data)

    async def _feed(self, fd: int) -> None:
        """io.input -> the terminal, in order, acked once written. ``eof`` sends the
        terminal's EOF character (Ctrl-D), as typing it would."""
        loop = asyncio.get_running_loop()
        while True:
            item = await self.io.next_input()
            data = item.data + (b"\x04" if item.eof else b"")
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    writable = asyncio.Event()
                    loop.add_writer(fd, writable.set)
                    try:
                        await writable.wait()
                    finally:
                        loop.remove_writer(fd)
                except OSError:
                    view = view[:0]  # the terminal is gone: input is dropped, still acked
            await self.io.applied(item.seq)

"""The ``exec`` command kind: run ``argv`` without a shell, stream its output, report how it
ended. The process runs in its own process group so cancel and timeout reach its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..logbuf import LogBuffer

READ_CHUNK = 64 * 1024
PIPE_DRAIN_S = 2.0  # after exit, how long to wait for pipes held open by grandchildren


@dataclass(frozen=True, slots=True)
class ExecOutcome:
    state: str  # succeeded | failed | cancelled
    exit_code: int | None = None
    error: str | None = None


class ExecRunner:
    def __init__(self, command_id: str | None, args: Mapping[str, Any], *, logs: LogBuffer,
                 on_output: Callable[[], None], kill_grace_s: float = 5.0,
                 source: str | None = None,
                 default_timeout_s: float | None = None,
                 max_output_bytes: int | None = None) -> None:
        self.command_id = command_id
        self.args = args
        self.source = source  # log source for both streams (apps); None: stdout/stderr
        self.logs = logs
        self.on_output = on_output
        self.kill_grace_s = kill_grace_s
        self.default_timeout_s = default_timeout_s
        self.max_output_bytes = max_output_bytes
        self.output_bytes = 0
        self.output_dropped_bytes = 0
        self._stop = asyncio.Event()
        self._stop_as: ExecOutcome | None = None
        self.pid: int | None = None
        self.paused = False

    def cancel(self, outcome: ExecOutcome | None = None) -> None:
        """Stop the process (SIGTERM to its group, SIGKILL after the grace period)."""
        self._stop_as = outcome or ExecOutcome("cancelled", error="cancelled by operator")
        self._stop.set()

    def pause(self) -> bool:
        """SIGSTOP to the process group; False when there is no process (yet/anymore)."""
        if self.pid is None or self._stop.is_set():
            return False
        _killpg(self.pid, signal.SIGSTOP)
        self.paused = True
        return True

    def resume(self) -> bool:
        """SIGCONT to the process group."""
        if self.pid is None:
            return False
        _killpg(self.pid, signal.SIGCONT)
        self.paused = False
        return True

    async def run(self) -> ExecOutcome:
        argv = self.args.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            return ExecOutcome("failed", error="exec needs 'argv', a non-empty list of strings")
        env_extra = self.args.get("env") or {}
        if not isinstance(env_extra, dict):
            return ExecOutcome("failed", error="exec 'env' must be a map of strings")
        env = {**os.environ, **{str(k): str(v) for k, v in env_extra.items()}}
        cwd = self.args.get("cwd")
        timeout_s = self.args.get("timeout_s", self.default_timeout_s)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=cwd if isinstance(cwd, str) else None,
                env=env, start_new_session=True)
        except FileNotFoundError as exc:
            missing = argv[0] if exc.filename in (None, argv[0]) else exc.filename
            return ExecOutcome("failed", error=f"not found: {missing}")
        except PermissionError:
            return ExecOutcome("failed", error=f"permission denied: {argv[0]}")
        except OSError as exc:
            return ExecOutcome("failed", error=f"cannot start {argv[0]}: {exc.strerror}")
        self.pid = proc.pid
        pumps = [asyncio.create_task(self._pump(proc.stdout, "stdout")),
                 asyncio.create_task(self._pump(proc.stderr, "stderr"))]
        waiter = asyncio.create_task(proc.wait())
        stopper = asyncio.create_task(self._stop.wait())
        outcome: ExecOutcome | None = None
        try:
            done, _ = await asyncio.wait(
                {waiter, stopper}, return_when=asyncio.FIRST_COMPLETED,
                timeout=float(timeout_s) if isinstance(timeout_s, int | float) else None)
            if waiter not in done:
                outcome = self._stop_as if stopper in done else ExecOutcome(
                    "failed", error=f"timeout after {timeout_s}s")
                await self._terminate(proc, waiter)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PIPE_DRAIN_S):
                    await asyncio.gather(*pumps)
        finally:
            for task in (*pumps, waiter, stopper):
                task.cancel()
            await asyncio.gather(*pumps, waiter, stopper, return_exceptions=True)
            if proc.returncode is None:  # we are being cancelled ourselves
                _killpg(proc.pid, signal.SIGKILL)
        if self.output_dropped_bytes:
            self.logs.add(self.command_id, "runtime", (
                f"[tether] {self.output_dropped_bytes} bytes of output dropped: over the "
                f"policy's max_output_bytes ({self.max_output_bytes})\n").encode())
            self.on_output()
        code = proc.returncode
        if outcome is not None:
            return ExecOutcome(outcome.state, exit_code=code, error=outcome.error)
        if code == 0:
            return ExecOutcome("succeeded", exit_code=0)
        if code is not None and code < 0:
            return ExecOutcome("failed", exit_code=code,
                               error=f"killed by signal {signal.Signals(-code).name}")
        return ExecOutcome("failed", exit_code=code, error=f"exit code {code}")

    async def _terminate(self, proc: asyncio.subprocess.Process,
                         waiter: asyncio.Task[int]) -> None:
        _killpg(proc.pid, signal.SIGTERM)
        _killpg(proc.pid, signal.SIGCONT)  # a paused group must wake to act on SIGTERM
        try:
            async with asyncio.timeout(self.kill_grace_s):
                await asyncio.shield(waiter)
        except TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(waiter)
        _killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group

    async def _pump(self, stream: asyncio.StreamReader | None, source: str) -> None:
        if stream is None:
            return
        while True:
            data = await stream.read(READ_CHUNK)
            if not data:
                return
            if self.max_output_bytes is not None:
                room = max(0, self.max_output_bytes - self.output_bytes)
                if len(data) > room:  # keep reading (the process must not block on a
                    self.output_dropped_bytes += len(data) - room  # full pipe), drop
                    data = data[:room]
                if not data:
                    continue
            self.output_bytes += len(data)
            self.logs.add(self.command_id, self.source or source, data)
            self.on_output()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)

"""The ``exec`` command kind: run ``argv`` without a shell, stream its output, report how it
ended. The process runs in its own process group (through a :class:`RuntimeBackend`, native
by default) so cancel, pause and timeout reach its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..backends import NativeBackend, ProcessHandle, ProcessSpec, RuntimeBackend, SpawnError
from ..logbuf import LogBuffer
from ..policy import Policy, Refused

READ_CHUNK = 64 * 1024
LINE_FLUSH_S = 0.05  # how long a partial line may wait for its newline
PIPE_DRAIN_S = 2.0  # after exit, how long to wait for pipes held open by grandchildren


@dataclass(frozen=True, slots=True)
class ExecOutcome:
    state: str  # succeeded | failed | cancelled
    exit_code: int | None = None
    error: str | None = None


class ExecRunner:
    def __init__(self, command_id: str | None, args: Mapping[str, Any], *, logs: LogBuffer,
                 on_output: Callable[[], None], kill_grace_s: float = 5.0,
                 source: str | None = None, backend: RuntimeBackend | None = None,
                 policy: Policy | None = None,
                 max_output_bytes: int | None = None) -> None:
        self.command_id = command_id
        self.args = args
        self.source = source  # log source for both streams (apps); None: stdout/stderr
        self.logs = logs
        self.on_output = on_output
        self.kill_grace_s = kill_grace_s
        self.policy = policy or Policy()  # the default admits anything: apps are local
        self.max_output_bytes = max_output_bytes
        self.output_bytes = 0
        self.output_dropped_bytes = 0
        self._stop = asyncio.Event()
        self._stop_as: ExecOutcome | None = None
        self.pid: int | None = None
        self.paused = False
        self.backend: RuntimeBackend = backend or NativeBackend()
        self.spawned = asyncio.Event()
        self._proc: ProcessHandle | None = None

    def cancel(self, outcome: ExecOutcome | None = None) -> None:
        """Stop the process (SIGTERM to its group, SIGKILL after the grace period)."""
        self._stop_as = outcome or ExecOutcome("cancelled", error="cancelled by operator")
        self._stop.set()

    def pause(self) -> bool:
        """SIGSTOP to the process group; False when there is no process (yet/anymore)."""
        if self._proc is None or self._stop.is_set():
            return False
        self._proc.signal_group(signal.SIGSTOP)
        self.paused = True
        return True

    def resume(self) -> bool:
        """SIGCONT to the process group."""
        if self._proc is None:
            return False
        self._proc.signal_group(signal.SIGCONT)
        self.paused = False
        return True

    async def run(self) -> ExecOutcome:
        """Run to the end. :attr:`spawned` is set once the spawn attempt is over (with
        :attr:`pid` set when it succeeded), whichever way ``run`` goes on."""
        try:
            return await self._run()
        finally:
            self.spawned.set()

    async def _run(self) -> ExecOutcome:
        # Judged again here, not only when the command was applied: the run starts from
        # the plan just judged (argv[0] resolved, env, cwd, timeout), so nothing the file
        # system or the args did in between can change what runs.
        try:
            plan = self.policy.plan_exec(self.args)
        except Refused as exc:
            return ExecOutcome("failed", error=f"rejected by policy: {exc.message}")
        timeout_s = plan.timeout_s
        spec = ProcessSpec(argv=plan.argv, env=plan.env, cwd=plan.cwd)
        try:
            proc = await self.backend.spawn(spec)
        except SpawnError as exc:
            return ExecOutcome("failed", error=exc.message)
        self._proc = proc
        self.pid = proc.pid
        self.spawned.set()
        pumps = [asyncio.create_task(self._pump(proc.stdout, "stdout")),
                 asyncio.create_task(self._pump(proc.stderr, "stderr"))]
        waiter = asyncio.create_task(proc.wait())
        stopper = asyncio.create_task(self._stop.wait())
        outcome: ExecOutcome | None = None
        try:
            done, _ = await asyncio.wait(
                {waiter, stopper}, return_when=asyncio.FIRST_COMPLETED,
                timeout=timeout_s)
            if waiter not in done:
                outcome = self._stop_as if stopper in done else ExecOutcome(
                    "failed", error=f"timeout after {timeout_s:g}s")
                await self._terminate(proc, waiter)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PIPE_DRAIN_S):
                    await asyncio.gather(*pumps)
        finally:
            for task in (*pumps, waiter, stopper):
                task.cancel()
            await asyncio.gather(*pumps, waiter, stopper, return_exceptions=True)
            if proc.returncode is None:  # we are being cancelled ourselves
                proc.signal_group(signal.SIGKILL)
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

    async def _terminate(self, proc: ProcessHandle, waiter: asyncio.Task[int]) -> None:
        proc.signal_group(signal.SIGTERM)
        proc.signal_group(signal.SIGCONT)  # a paused group must wake to act on SIGTERM
        try:
            async with asyncio.timeout(self.kill_grace_s):
                await asyncio.shield(waiter)
        except TimeoutError:
            proc.signal_group(signal.SIGKILL)
            await asyncio.shield(waiter)
        proc.signal_group(signal.SIGKILL)  # stragglers left in the group

    async def _pump(self, stream: asyncio.StreamReader, source: str) -> None:
        """Forward output line-buffered: complete lines go at once; a partial line waits at
        most LINE_FLUSH_S for its end (or READ_CHUNK bytes), then goes as it is. Bytes are
        forwarded untouched (binary-safe)."""
        pending = bytearray()
        while True:
            try:
                async with asyncio.timeout(LINE_FLUSH_S if pending else None):
                    data = await stream.read(READ_CHUNK)
            except TimeoutError:
                self._emit(source, bytes(pending))
                pending.clear()
                continue
            if not data:
                if pending:
                    self._emit(source, bytes(pending))
                return
            pending += data
            cut = pending.rfind(b"\n") + 1
            if len(pending) >= READ_CHUNK:
                cut = len(pending)
            if cut:
                self._emit(source, bytes(pending[:cut]))
                del pending[:cut]

    def _emit(self, source: str, data: bytes) -> None:
        if self.max_output_bytes is not None:
            room = max(0, self.max_output_bytes - self.output_bytes)
            if len(data) > room:  # keep reading (the process must not block on a full
                self.output_dropped_bytes += len(data) - room  # pipe), drop what is over
                data = data[:room]
            if not data:
                return
        self.output_bytes += len(data)
        self.logs.add(self.command_id, self.source or source, data)
        self.on_output()

"""The ``exec`` command kind: run ``argv`` without a shell, stream its output, report how it
ended. The process runs in its own process group (through a :class:`RuntimeBackend`, native
by default) so cancel, pause and timeout reach its children.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..backends import NativeBackend, ProcessHandle, ProcessSpec, RuntimeBackend, SpawnError
from ..iochannel import IoChannel
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
    # Bytes the process wrote, per source ({"stdout_bytes": n, "stderr_bytes": m}): a
    # reader compares them with what it got to tell, and say, how much was dropped.
    result: Mapping[str, int] | None = None


class ExecRunner:
    def __init__(self, command_id: str | None, args: Mapping[str, Any], *, logs: LogBuffer,
                 on_output: Callable[[], None], kill_grace_s: float = 5.0,
                 source: str | None = None, backend: RuntimeBackend | None = None,
                 policy: Policy | None = None,
                 max_output_bytes: int | None = None, io: IoChannel | None = None) -> None:
        self.command_id = command_id
        # exec with stdin: the process reads a pipe fed from this channel (io.input)
        self.io = io
        self.args = args
        self.source = source  # log source for both streams (apps); None: stdout/stderr
        self.logs = logs
        self.on_output = on_output
        self.kill_grace_s = kill_grace_s
        self.policy = policy or Policy()  # the default admits anything: apps are local
        self.max_output_bytes = max_output_bytes
        self.output_bytes = 0
        self.output_dropped_bytes = 0
        self.read_bytes: dict[str, int] = {"stdout": 0, "stderr": 0}  # all the pipes gave
        self._waiting_room = 0  # pumps waiting for room in the log buffer (backpressure)
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

    def signal(self, name: str) -> bool:
        """``SIG<name>`` to the process group (io.signal: Ctrl-C on ``tether exec`` is INT);
        False when there is no process."""
        if self._proc is None or self._stop.is_set():
            return False
        self._proc.signal_group(signal.Signals[f"SIG{name}"])
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
        spec = ProcessSpec(argv=plan.argv, env=plan.env, cwd=plan.cwd,
                           executable=plan.executable, stdin=self.io is not None)
        try:
            proc = await self.backend.spawn(spec)
        except SpawnError as exc:
            return ExecOutcome("failed", exit_code=exc.exit_code, error=exc.message)
        self._proc = proc
        self.pid = proc.pid
        self.spawned.set()
        pumps = [asyncio.create_task(self._pump(proc.stdout, "stdout")),
                 asyncio.create_task(self._pump(proc.stderr, "stderr"))]
        feeders = [] if self.io is None or proc.stdin is None else [
            asyncio.create_task(self._feed(self.io, proc.stdin)),
            asyncio.create_task(self.io.run())]
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
            await self._drain(pumps, patient=outcome is None)
        finally:
            for task in (*pumps, *feeders, waiter, stopper):
                task.cancel()
            await asyncio.gather(*pumps, *feeders, waiter, stopper, return_exceptions=True)
            if proc.returncode is None:  # we are being cancelled ourselves
                proc.signal_group(signal.SIGKILL)
        if self.output_dropped_bytes:
            await self._deliver("runtime", (
                f"[tether] {self.output_dropped_bytes} bytes of output dropped: over the "
                f"policy's max_output_bytes ({self.max_output_bytes})\n").encode())
        code = proc.returncode
        result = {f"{source}_bytes": n for source, n in self.read_bytes.items()}
        if outcome is not None:
            return ExecOutcome(outcome.state, exit_code=code, error=outcome.error,
                               result=result)
        if code == 0:
            return ExecOutcome("succeeded", exit_code=0, result=result)
        if code is not None and code < 0:
            return ExecOutcome("failed", exit_code=code, result=result,
                               error=f"killed by signal {signal.Signals(-code).name}")
        return ExecOutcome("failed", exit_code=code, error=f"exit code {code}", result=result)

    async def _feed(self, io: IoChannel, stdin: asyncio.StreamWriter) -> None:
        """Write io.input to the process's stdin in order, acking each once written (the
        pipe's own buffer and ``drain`` are the backpressure); eof, or the operator's lease
        running out, closes it. A process that closed its stdin takes nothing more: later
        input is acked and dropped, as a pipe to a finished reader would."""
        io.on_lease_lost = stdin.close
        open_ = True
        while True:
            item = await io.next_input()
            if open_ and item.data:
                try:
                    stdin.write(item.data)
                    await stdin.drain()
                except (ConnectionError, OSError, RuntimeError):
                    open_ = False
            if open_ and item.eof:
                stdin.close()
                open_ = False
            await io.applied(item.seq)

    async def _drain(self, pumps: list[asyncio.Task[None]], *, patient: bool) -> None:
        """After the process ended: let the pumps read to the end of their pipes. When it
        ended by itself (``patient``), a pump waiting for room in the log buffer is waited
        for (backpressure: that output is kept); pipes held open by grandchildren get
        PIPE_DRAIN_S without a byte. When it was stopped (cancel, timeout, the node
        stopping), the pumps get PIPE_DRAIN_S in all. Then the caller cancels what is
        left; bytes read but not sent show in the byte counts of the result."""
        while True:
            seen = sum(self.read_bytes.values())
            _, pending = await asyncio.wait(pumps, timeout=PIPE_DRAIN_S)
            if not pending or not patient:
                return
            if not self._waiting_room and sum(self.read_bytes.values()) == seen:
                return

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
        forwarded untouched (binary-safe). A command's output waits for room in the log
        buffer before the next read, so a reader that falls behind slows the process down
        instead of losing its output."""
        pending = bytearray()
        while True:
            try:
                async with asyncio.timeout(LINE_FLUSH_S if pending else None):
                    data = await stream.read(READ_CHUNK)
            except TimeoutError:
                await self._deliver(source, bytes(pending))
                pending.clear()
                continue
            if not data:
                if pending:
                    await self._deliver(source, bytes(pending))
                return
            self.read_bytes[source] = self.read_bytes.get(source, 0) + len(data)
            pending += data
            cut = pending.rfind(b"\n") + 1
            if len(pending) >= READ_CHUNK:
                cut = len(pending)
            if cut:
                await self._deliver(source, bytes(pending[:cut]))
                del pending[:cut]

    async def _deliver(self, source: str, data: bytes) -> None:
        """Into the log buffer, within the policy's ``max_output_bytes`` (past it, bytes
        are read and dropped, and counted, so the process never blocks on a full pipe).
        A command's output waits for room (:meth:`LogBuffer.put`); an app's output, which
        no one waits on, is added at once and the buffer drops its oldest."""
        if source == "runtime":  # the runner's own note: not output, not capped
            label = source
        else:
            label = self.source or source
            if self.max_output_bytes is not None:
                room = max(0, self.max_output_bytes - self.output_bytes)
                if len(data) > room:
                    self.output_dropped_bytes += len(data) - room
                    data = data[:room]
                if not data:
                    return
            self.output_bytes += len(data)
        if self.command_id is None:
            self.logs.add(None, label, data)
        else:
            self._waiting_room += 1
            try:
                # Before each wait for room the link is woken, so what is buffered goes
                # (earlier pieces of this very ``data`` included) and room comes back.
                await self.logs.put(self.command_id, label, data, wake=self.on_output)
            finally:
                self._waiting_room -= 1
        self.on_output()

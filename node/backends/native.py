"""The native backend: child processes of the runtime, each in its own session and process
group (so signals reach its children), stdin closed (or piped, when the spec asks),
stdout/stderr piped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from .base import ProcessHandle, ProcessSpec, SpawnError


class NativeProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self._stdout, self._stderr = proc.stdout, proc.stderr

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._stderr

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        return self._proc.stdin

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)


class NativeBackend:
    name = "native"

    async def spawn(self, spec: ProcessSpec) -> ProcessHandle:
        argv = spec.argv
        env = {**os.environ, **spec.env}
        stdin = asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=spec.cwd, env=env,
                start_new_session=True, executable=spec.executable)
        except FileNotFoundError as exc:
            missing = argv[0] if exc.filename in (None, argv[0]) else exc.filename
            raise SpawnError(f"not found: {missing}", exit_code=127) from None
        except PermissionError:
            raise SpawnError(f"permission denied: {argv[0]}", exit_code=126) from None
        except OSError as exc:
            raise SpawnError(f"cannot start {argv[0]}: {exc.strerror}") from None
        return NativeProcess(proc)

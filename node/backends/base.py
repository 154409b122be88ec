"""The backend interface. Callers (the exec runner, the app supervisor) only see this:
a backend turns a :class:`ProcessSpec` into a :class:`ProcessHandle` whose output can be
read and whose whole group can be signalled. A ``docker`` backend implements the same two
classes (``docker run`` / ``docker kill --signal``) without any change to callers.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tether.protocol.errors import TetherError


class SpawnError(TetherError):
    """The process could not start; ``message`` says why in one line. ``exit_code`` is
    what a shell reports for the same failure (127 not found, 126 not executable), so
    ``tether exec`` exits as ssh would."""

    default_code = "spawn_failed"

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # added to the node's environment
    cwd: str | None = None
    # The file execve runs, when it must not be looked up again from argv[0] (a judged
    # program: a symlink on the way could be re-pointed between judgement and spawn).
    # argv[0] is still what the process sees (a multi-call binary picks its applet by it).
    executable: str | None = None
    stdin: bool = False  # a pipe the caller writes (exec with stdin); else /dev/null


class ProcessHandle(Protocol):
    """A started process group."""

    @property
    def pid(self) -> int: ...

    @property
    def stdout(self) -> asyncio.StreamReader: ...

    @property
    def stderr(self) -> asyncio.StreamReader: ...

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        """The process's stdin when the spec asked for a pipe, else None."""

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process of the group; a group already gone is no error."""


class RuntimeBackend(Protocol):
    name: str

    async def spawn(self, spec: ProcessSpec) -> ProcessHandle:
        """Start ``spec`` in a new process group. Raises SpawnError."""

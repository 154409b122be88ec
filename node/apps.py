"""Managed apps: long-lived processes the node keeps running, with a restart policy.

Apps are declared in ``<state-dir>/apps.json`` (a list of ``{name, argv, env?, cwd?,
restart: always|on-failure|never, backoff_s?, max_backoff_s?}``) and started when the
runtime starts unless ``autostart`` is false; the kinds ``app.start``, ``app.stop``,
``app.restart`` and ``app.status`` drive them. Their output streams as ``log.chunk`` with
``source`` = the app's name.

Rule (runtime restarts, deterministic): a new runtime never adopts processes of the old
one. It kills what the previous runtime left (the process groups recorded in
``apps.pids.json``) and starts the apps again from the declaration; their restart counters
start from zero. Adopting is not possible without the old runtime's pipes and exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tether.common.tasks import cancel_and_wait
from tether.protocol.errors import TetherError

from .executors.exec import ExecOutcome, ExecRunner
from .logbuf import LogBuffer

logger = logging.getLogger(__name__)

RESTART_POLICIES = ("always", "on-failure", "never")
STABLE_AFTER_S = 60.0  # an app that ran this long starts its backoff from the base again
TAIL_LINES = 20  # an app's last output lines kept (a bundle's rollback report names them)
TAIL_LINE_CHARS = 200


class AppError(TetherError):
    default_code = "invalid_request"


@dataclass(frozen=True, slots=True)
class AppSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    restart: str = "on-failure"
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    autostart: bool = True

    @classmethod
    def from_dict(cls, raw: Any) -> AppSpec:
        if not isinstance(raw, dict):
            raise AppError("each app must be a JSON object")
        name, argv = raw.get("name"), raw.get("argv")
        if not isinstance(name, str) or not 0 < len(name) <= 64 or ":" in name:
            raise AppError(f"app name {name!r} must be 1 to 64 characters without ':'")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise AppError(f"app {name!r}: 'argv' must be a non-empty list of strings")
        restart = raw.get("restart", "on-failure")
        if restart not in RESTART_POLICIES:
            raise AppError(f"app {name!r}: 'restart' must be one of {RESTART_POLICIES}")
        env = raw.get("env") or {}
        if not isinstance(env, dict):
            raise AppError(f"app {name!r}: 'env' must be an object of strings")
        backoff, cap = raw.get("backoff_s", 0.5), raw.get("max_backoff_s", 30.0)
        if not (isinstance(backoff, int | float) and isinstance(cap, int | float)
                and 0 < backoff <= cap):
            raise AppError(f"app {name!r}: need 0 < backoff_s <= max_backoff_s")
        return cls(name=name, argv=tuple(argv), env={str(k): str(v) for k, v in env.items()},
                   cwd=raw.get("cwd"), restart=restart, backoff_s=float(backoff),
                   max_backoff_s=float(cap), autostart=bool(raw.get("autostart", True)))


def load_apps(path: Path) -> dict[str, AppSpec]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise AppError(f"apps file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise AppError(f"apps file {path} must hold a JSON list of apps")
    specs = [AppSpec.from_dict(item) for item in raw]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise AppError(f"apps file {path} names an app twice")
    return {s.name: s for s in specs}


@dataclass(slots=True)
class AppState:
    state: str = "stopped"  # running | backoff | exited | stopped
    pid: int | None = None
    exit_code: int | None = None  # of the last exit, kept while it runs again
    restarts: int = 0
    since: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "pid": self.pid, "exit_code": self.exit_code,
                "restarts": self.restarts, "since": round(self.since, 3)}


class AppSupervisor:
    """Runs each app in its own task (in the caller's task group) and its own process
    group; ``on_change`` is called with the whole app table after every state change."""

    def __init__(self, specs: dict[str, AppSpec], *, logs: LogBuffer, pids_path: Path,
                 on_output: Callable[[], None],
                 on_change: Callable[[dict[str, dict[str, Any]]], None],
                 rng: random.Random | None = None) -> None:
        self.specs = specs
        self.logs = logs
        self.pids_path = pids_path
        self.on_output = on_output
        self.on_change = on_change
        self.rng = rng or random.Random()
        self.states: dict[str, AppState] = {name: AppState() for name in specs}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, ExecRunner] = {}
        self._tg: asyncio.TaskGroup | None = None
        # Told of every exit of an app's process (node/bundles.py's probation counts them).
        self.on_exit: Callable[[str, ExecOutcome], None] | None = None
        self.tails: dict[str, deque[str]] = {}

    def put(self, spec: AppSpec) -> None:
        """Declare ``spec`` at run time (an app from a bundle, node/bundles.py), replacing
        a declaration of that name; the caller stops the old one first."""
        self.specs[spec.name] = spec
        self.states.setdefault(spec.name, AppState())

    async def remove(self, name: str) -> None:
        """Stop ``name`` and forget its declaration (a bundle's app being replaced)."""
        if name in self.specs:
            await self.stop(name)
            del self.specs[name]
            self.states.pop(name, None)
            self.tails.pop(name, None)
            self.on_change(self.table())

    def reap_previous(self) -> int:
        """Kill the process groups a previous runtime left; returns how many were alive."""
        try:
            pids = json.loads(self.pids_path.read_text())
        except (OSError, ValueError):
            return 0
        killed = 0
        for pgid in pids.values() if isinstance(pids, dict) else ():
            with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
                os.killpg(int(pgid), signal.SIGKILL)
                killed += 1
        self.pids_path.unlink(missing_ok=True)
        return killed

    def start_all(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg
        for name, spec in self.specs.items():
            if spec.autostart:
                self.start(name)

    def table(self) -> dict[str, dict[str, Any]]:
        return {name: st.as_dict() for name, st in self.states.items()}

    def check(self, name: str) -> AppSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise AppError(f"no app named {name!r} (declared: {sorted(self.specs)})")
        return spec

    def start(self, name: str) -> bool:
        """Start ``name`` unless it runs; False when it was already running."""
        self.check(name)
        task = self._tasks.get(name)
        if task is not None and not task.done():
            return False
        assert self._tg is not None
        self._tasks[name] = self._tg.create_task(self._supervise(name), name=f"app:{name}")
        return True

    async def stop(self, name: str) -> bool:
        """Stop ``name`` (SIGTERM, then SIGKILL after 5 s) and keep it stopped."""
        self.check(name)
        task = self._tasks.pop(name, None)
        if task is None or task.done():
            return False
        runner = self._runners.get(name)
        if runner is not None:
            runner.cancel()
        await cancel_and_wait(task)
        self._set(name, state="stopped", pid=None)
        return True

    async def restart(self, name: str) -> None:
        await self.stop(name)
        self.states[name].restarts += 1
        self.start(name)

    async def stop_all(self) -> None:
        for name in list(self._tasks):
            await self.stop(name)

    async def _supervise(self, name: str) -> None:
        spec = self.specs[name]
        delay = spec.backoff_s
        while True:
            started = time.monotonic()
            tail = self.tails.setdefault(name, deque(maxlen=TAIL_LINES))
            runner = ExecRunner(None, {"argv": list(spec.argv), "env": spec.env,
                                       "cwd": spec.cwd},
                                logs=cast(LogBuffer, _Tail(self.logs, tail)),
                                on_output=self.on_output, source=name)
            self._runners[name] = runner
            run = asyncio.ensure_future(runner.run())
            try:
                await runner.spawned.wait()
                self._set(name, state="running", pid=runner.pid)
                self._record_pids()
                outcome = await asyncio.shield(run)
            except asyncio.CancelledError:
                runner.cancel()
                with contextlib.suppress(Exception):
                    await run
                raise
            finally:
                self._runners.pop(name, None)
            code = outcome.exit_code
            failed = outcome.state != "succeeded"
            if self.on_exit is not None:
                self.on_exit(name, outcome)
            if spec.restart == "never" or (spec.restart == "on-failure" and not failed):
                self._set(name, state="exited", pid=None, exit_code=code)
                self._record_pids()
                return
            if time.monotonic() - started >= STABLE_AFTER_S:
                delay = spec.backoff_s
            wait = delay * (0.5 + self.rng.random() / 2)  # jittered, never zero
            self._set(name, state="backoff", pid=None, exit_code=code)
            self._record_pids()
            logger.info("app exited; restarting", extra={"app": name, "code": code,
                                                         "delay_s": round(wait, 3)})
            await asyncio.sleep(wait)
            delay = min(delay * 2, spec.max_backoff_s)
            self.states[name].restarts += 1

    def _set(self, name: str, **changes: Any) -> None:
        st = self.states[name]
        for key, value in changes.items():
            setattr(st, key, value)
        st.since = time.time()
        self.on_change(self.table())

    def _record_pids(self) -> None:
        pids = {n: s.pid for n, s in self.states.items() if s.pid is not None}
        tmp = self.pids_path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(pids))
            tmp.replace(self.pids_path)


class _Tail:
    """An app's output on its way to the log buffer (``add``, all an app's runner calls),
    its last lines kept in ``lines``."""

    def __init__(self, logs: LogBuffer, lines: deque[str]) -> None:
        self.logs, self.lines = logs, lines

    def add(self, command_id: str | None, source: str, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.lines.append(line[:TAIL_LINE_CHARS])
        self.logs.add(command_id, source, data)

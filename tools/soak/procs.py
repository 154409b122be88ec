"""The soak's processes: a controller (or replica) and a real node, each started, killed with
``-9`` and started again on the same port / state dir, from the driver's event loop.

Invariant: every ``Popen`` here is owned by one object, which reaps it (``wait``) after every
signal it sends, so no zombie outlives a kill; :meth:`stop` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

POLL_S = 0.05  # readiness polling (a condition with a deadline, not a sleep-as-sync)
START_TIMEOUT_S = 60.0
LIVENESS = ["--heartbeat-s", "0.5", "--stale-after-s", "3", "--offline-after-s", "6"]


def tether_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli.main", "--log-level", "warning", *args]


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie counts as gone
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


class _Child:
    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL,
                                          env={**os.environ, **self.env},
                                          start_new_session=True)

    @property
    def pid(self) -> int | None:
        popen = self.popen
        return popen.pid if popen is not None and popen.poll() is None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    async def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            await asyncio.to_thread(self.popen.wait, 10)

    async def stop(self, timeout_s: float = 15.0) -> None:
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(popen.wait, timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            await asyncio.to_thread(popen.wait, 10)

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


class Controller(_Child):
    """``tether controller serve`` in ``data_dir``; the first start picks a port, every
    restart reuses it (nodes and proxies keep dialling the same address)."""

    def __init__(self, name: str, data_dir: Path, *, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(data_dir / "controller.log", env or {})
        self.name = name
        self.data_dir = data_dir
        self.extra = extra or []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    async def start(self) -> None:
        url_file = self.data_dir / "controller.url"
        url_file.unlink(missing_ok=True)
        self._spawn(tether_argv("controller", "serve", "--data-dir", str(self.data_dir),
                                "--port", str(self.port), *LIVENESS, *self.extra))
        async with asyncio.timeout(START_TIMEOUT_S):
            while not url_file.exists():
                if not self.alive:
                    raise RuntimeError(f"controller {self.name} exited:\n{self.tail()}")
                await asyncio.sleep(POLL_S)
        self.port = int(url_file.read_text().strip().rsplit(":", 1)[1])


class Node(_Child):
    """``tether node run`` dialling ``controller_url`` (its fault proxy); the runtime starts
    its own sidecar, whose pid is in ``<state_dir>/sidecar.pid``."""

    def __init__(self, node_id: str, state_dir: Path, controller_url: str, *,
                 env: dict[str, str] | None = None) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(state_dir / "node.log", env or {})
        self.node_id = node_id
        self.state_dir = state_dir
        self.controller_url = controller_url

    async def enroll(self, enroll_url: str, join_token: str) -> None:
        argv = tether_argv("node", "enroll", "--controller", enroll_url, "--token", join_token,
                           "--node-id", self.node_id, "--state-dir", str(self.state_dir))
        out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"enrolling {self.node_id} failed: {out.stderr.decode()[-800:]}")

    async def start(self) -> None:
        self._spawn(tether_argv("node", "run", "--state-dir", str(self.state_dir),
                                "--controller-url", self.controller_url,
                                "--max-concurrent", "4"))

    def status_url(self, role: str) -> str | None:
        """The loopback base URL of the ``runtime``'s or ``sidecar``'s status endpoint, as
        its last start wrote it (a stale file names a dead incarnation: check the pid its
        ``/status`` answers with)."""
        try:
            return (self.state_dir / f"{role}.status.url").read_text().strip() or None
        except OSError:
            return None

    def sidecar_pid(self) -> int | None:
        try:
            pid = int((self.state_dir / "sidecar.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    async def kill9_sidecar(self) -> bool:
        pid = self.sidecar_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            while pid_alive(pid):
                await asyncio.sleep(POLL_S)
        return True

    async def stop_all(self) -> None:
        """The runtime (SIGTERM: goodbye), then any sidecar left (SIGTERM, then -9)."""
        await self.stop()
        pid = self.sidecar_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                while pid_alive(pid):
                    await asyncio.sleep(POLL_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

"""PostgreSQL, NATS and HAProxy started on loopback for the tests and ``tether bench``, in
temporary directories, never relying on a server that is already running.

Contract:

* ``start()`` returns once the server accepts clients, or raises :class:`ServerUnavailable`
  with a reason a person can act on (binary missing, failed to start, not ready in time).
  Every wait is bounded.
* ``stop()`` ends the process (keeping its files and port, so ``start()`` brings the same
  server back: what a "server restart" test needs); ``close()`` stops it and removes its
  directory. Both are idempotent. ``async with`` is ``start()`` .. ``close()``.
* The objects hold a :class:`subprocess.Popen`, not an asyncio transport, so a server started
  on one event loop can be stopped from another (a session-wide test server outlives each
  test's loop).

PostgreSQL refuses to run as root: when root, ``initdb`` and ``postgres`` run as the
``postgres`` system user the Debian package creates (``nobody`` otherwise) via ``setpriv``,
and the temporary directory is given to that user.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import glob
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

from tether.protocol.errors import TetherError

POLL_S = 0.05  # readiness polling interval (a condition with a deadline, not a sleep-as-sync)
LOG_TAIL_BYTES = 2000


class ServerUnavailable(TetherError):
    """A server could not be started here; ``reason`` says why (shown in skips and bench
    notes)."""

    default_code = "unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in ``/usr/sbin`` (haproxy, off a non-root PATH), else in
    Debian's ``/usr/lib/postgresql/<version>/bin`` (the newest version first), else None."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: _version_key(Path(p).parent.parent.name), reverse=True)
    return candidates[0] if candidates else None


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if it is taken later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-LOG_TAIL_BYTES:]
    except OSError:
        return ""
    return data.decode(errors="replace").strip()


def _signal_tree(pid: int, sig: int) -> None:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


class _Process:
    """One server process: started detached from our signals, logging to a file, ended by a
    signal with a bounded wait (then SIGKILL)."""

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], log_path: Path, cwd: Path) -> None:
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=cwd,
                                          start_new_session=True)

    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal_tree(self, sig: int) -> None:
        """``sig`` to the server and every process below it (PostgreSQL's backends each
        start a session of their own, so a process group would miss them)."""
        if self.popen is None or self.popen.poll() is not None:
            raise ServerUnavailable("the server is not running")
        _signal_tree(self.popen.pid, sig)

    async def end(self, sig: int, timeout_s: float) -> None:
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(sig)
            _signal_tree(popen.pid, signal.SIGCONT)  # a frozen server must run to obey it
        try:
            await asyncio.to_thread(popen.wait, timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            await asyncio.to_thread(popen.wait, 5.0)


class _Server(abc.ABC):
    """What both servers share: a process tree owned by ``_proc``, a temp directory, the
    async context manager, stop by ``STOP_SIGNAL``, freeze/thaw, and close. Subclasses set
    ``dir``, ``stop_timeout_s`` and implement :meth:`start`."""

    STOP_SIGNAL = signal.SIGTERM
    dir: Path | None
    stop_timeout_s: float
    _proc: _Process

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the server (each starts its own way) and wait until it answers."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def stop(self) -> None:
        """Stop the process; its data and port are kept for :meth:`start`."""
        await self._proc.end(self.STOP_SIGNAL, self.stop_timeout_s)

    async def restart(self) -> None:
        """Stop, then start on the same port (connected clients see the server go away and
        come back)."""
        await self.stop()
        await self.start()

    def freeze(self) -> None:
        """SIGSTOP the server and its children: it neither answers nor refuses, as a hung
        server or a network partition looks to a client. :meth:`thaw` resumes it."""
        self._proc.signal_tree(signal.SIGSTOP)

    def thaw(self) -> None:
        self._proc.signal_tree(signal.SIGCONT)

    async def close(self) -> None:
        """Stop, and remove the server's directory."""
        await self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class PostgresServer(_Server):
    """A private PostgreSQL cluster on ``127.0.0.1:<port>`` with trust authentication for
    user :attr:`user` (loopback only), its unix socket inside its own directory.

    ``fsync`` stays on by default: the bench measures durable commits. ``initdb`` itself runs
    with ``--no-sync`` (a fresh cluster has nothing to lose)."""

    user = "tether"
    STOP_SIGNAL = signal.SIGINT  # fast shutdown: active sessions are disconnected

    def __init__(self, *, fsync: bool = True, max_connections: int = 100,
                 start_timeout_s: float = 30.0, stop_timeout_s: float = 10.0,
                 base_dir: Path | None = None) -> None:
        self.fsync = fsync
        self.max_connections = max_connections
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._base_dir = base_dir
        self.dir: Path | None = None
        self.port: int | None = None
        self._proc = _Process()
        self._run_as: pwd.struct_passwd | None = None

    # -- addresses --------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, database: str = "postgres") -> str:
        """``postgresql://tether@127.0.0.1:<port>/<database>``."""
        if self.port is None:
            raise ServerUnavailable("postgresql has not been started")
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "postgres.log"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """initdb (first start only), then run ``postgres`` and wait until it answers a
        query. A later ``start()`` after ``stop()`` keeps the data and the port."""
        if self._proc.exited() is None and self._proc.popen is not None:
            return
        initdb, postgres = find_binary("initdb"), find_binary("postgres")
        if initdb is None or postgres is None:
            raise ServerUnavailable(
                "postgresql is not installed (initdb/postgres not on PATH nor in "
                "/usr/lib/postgresql/*/bin): 'make test' installs it when run as root "
                "(apt-get install postgresql)")
        if self.dir is None:
            await self._init(initdb)
        # A port picked free may be taken before postgres binds it: try a few.
        first = self.port is None
        for _attempt in range(3 if first else 1):
            if first:
                self.port = free_port()
            try:
                await self._launch(postgres)
                return
            except ServerUnavailable as exc:
                if not first or "could not bind" not in exc.reason.lower():
                    raise
        raise ServerUnavailable("postgresql could not bind a free loopback port in 3 tries")

    async def create_database(self, name: str) -> str:
        """A new, empty database; returns its DSN. ``name`` must be a plain identifier."""
        _check_identifier(name)
        await self._admin(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    async def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        _check_identifier(name)
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- internals --------------------------------------------------------------------

    async def _admin(self, sql: str) -> None:
        import asyncpg  # a runtime dependency; imported late so NATS users need not load it

        async with asyncio.timeout(30):
            conn = await asyncpg.connect(self.dsn(), timeout=10)
            try:
                await conn.execute(sql)
            finally:
                await conn.close(timeout=5)

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self._run_as is None:
            return argv
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise ServerUnavailable("running as root and setpriv (util-linux) is missing: "
                                    "postgresql refuses to run as root")
        user = self._run_as
        return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                "--", *argv]

    async def _init(self, initdb: str) -> None:
        base = str(self._base_dir) if self._base_dir is not None else None
        self.dir = Path(tempfile.mkdtemp(prefix="tether-pg-", dir=base))
        if os.geteuid() == 0:
            self._run_as = _unprivileged_user()
            os.chown(self.dir, self._run_as.pw_uid, self._run_as.pw_gid)
        argv = self._as_server_user([
            initdb, "-D", str(self.dir / "data"), "-U", self.user, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync"])
        log = self.dir / "initdb.log"
        proc = _Process()
        proc.spawn(argv, log, self.dir)
        assert proc.popen is not None
        try:
            code = await asyncio.wait_for(asyncio.to_thread(proc.popen.wait),
                                          self.start_timeout_s)
        except TimeoutError:
            await proc.end(signal.SIGKILL, 5.0)
            raise ServerUnavailable(
                f"initdb did not finish within {self.start_timeout_s}s") from None
        if code != 0:
            raise ServerUnavailable(f"initdb failed (exit {code}): {_tail(log)}")

    async def _launch(self, postgres: str) -> None:
        assert self.dir is not None and self.port is not None
        argv = self._as_server_user([
            postgres, "-D", str(self.dir / "data"), "-p", str(self.port),
            "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1",
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", f"max_connections={self.max_connections}",
            "-c", "logging_collector=off"])
        start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc.spawn(argv, self.log_path, self.dir)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = self._proc.exited()
            if code is not None:
                self._proc.popen = None
                log = self.log_path.read_bytes()[start_offset:].decode(errors="replace")
                raise ServerUnavailable(
                    f"postgres exited with {code} at start: {log[-LOG_TAIL_BYTES:].strip()}")
            if await self._answers():
                return
            if time.monotonic() > deadline:
                await self.stop()
                raise ServerUnavailable(
                    f"postgres did not accept connections within {self.start_timeout_s}s: "
                    f"{_tail(self.log_path)}")
            await asyncio.sleep(POLL_S)

    async def _answers(self) -> bool:
        import asyncpg

        try:
            async with asyncio.timeout(2):
                conn = await asyncpg.connect(self.dsn(), timeout=2)
                try:
                    return bool(await conn.fetchval("SELECT 1") == 1)
                finally:
                    await conn.close(timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerUnavailable("running as root and neither a 'postgres' nor a 'nobody' user "
                            "exists: postgresql refuses to run as root")


def _check_identifier(name: str) -> None:
    if not name or not all(c.isalnum() or c == "_" for c in name) or len(name) > 63:
        raise ValueError(f"database name {name!r} must be 1-63 letters, digits or '_'")


class NatsServer(_Server):
    """A private ``nats-server`` on ``127.0.0.1:<port>``; JetStream off unless asked.

    :meth:`restart` keeps the port, so clients configured with :attr:`url` reconnect to it."""

    def __init__(self, *, jetstream: bool = False, start_timeout_s: float = 15.0,
                 stop_timeout_s: float = 10.0, base_dir: Path | None = None) -> None:
        self.jetstream = jetstream
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._base_dir = base_dir
        self.dir: Path | None = None
        self.port: int | None = None
        self._proc = _Process()

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerUnavailable("nats-server has not been started")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "nats-server.log"

    async def start(self) -> None:
        """Run nats-server and wait until it greets a client with INFO."""
        if self._proc.exited() is None and self._proc.popen is not None:
            return
        binary = find_binary("nats-server")
        if binary is None:
            raise ServerUnavailable("nats-server is not installed: 'make test' installs it "
                                    "when run as root (apt-get install nats-server)")
        if self.dir is None:
            base = str(self._base_dir) if self._base_dir is not None else None
            self.dir = Path(tempfile.mkdtemp(prefix="tether-nats-", dir=base))
        first = self.port is None
        for _attempt in range(3 if first else 1):
            if first:
                self.port = free_port()
            try:
                await self._launch(binary)
                return
            except ServerUnavailable as exc:
                if not first or "address already in use" not in exc.reason.lower():
                    raise
        raise ServerUnavailable("nats-server could not bind a free loopback port in 3 tries")

    async def _launch(self, binary: str) -> None:
        assert self.dir is not None and self.port is not None
        argv = [binary, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            argv += ["--jetstream", "--store_dir", str(self.dir / "jetstream")]
        start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc.spawn(argv, self.log_path, self.dir)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = self._proc.exited()
            if code is not None:
                self._proc.popen = None
                log = self.log_path.read_bytes()[start_offset:].decode(errors="replace")
                raise ServerUnavailable(
                    f"nats-server exited with {code} at start: {log[-LOG_TAIL_BYTES:].strip()}")
            if await self._greets():
                return
            if time.monotonic() > deadline:
                await self.stop()
                raise ServerUnavailable(
                    f"nats-server did not accept connections within {self.start_timeout_s}s: "
                    f"{_tail(self.log_path)}")
            await asyncio.sleep(POLL_S)

    async def _greets(self) -> bool:
        assert self.port is not None
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    return (await reader.readline()).startswith(b"INFO ")
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return False


def haproxy_config(port: int, backends: list[tuple[str, str]], *, check_inter_ms: int = 2000,
                   bind: str = "127.0.0.1", maxconn: int = 20_000) -> str:
    """An HAProxy configuration for replicas of one controller behind one address.

    ``backends`` is ``[(replica_id, "host:port"), ...]``. What it says, and why:

    * ``mode http``: HAProxy sees the WebSocket upgrade and switches the connection to a
      tunnel, which ``timeout tunnel`` then bounds (a node's session lasts hours; its
      heartbeats keep it well inside the hour);
    * ``balance roundrobin`` and no stickiness: any replica takes any node; a hello on
      another replica supersedes the old session (4409), so nothing needs to pin a node;
    * ``option redispatch`` with ``retries 3``: a dial to a replica that just died goes to
      another one instead of failing back to the node;
    * the health check asks ``GET /api/v1/health`` (no authentication) every
      ``check_inter_ms``; two failures take a replica out, one success puts it back.
    """
    servers = "\n".join(f"    server {name} {address}" for name, address in backends)
    return f"""global
    maxconn {maxconn}

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option redispatch
    retries 3

frontend tether
    bind {bind}:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /api/v1/health
    default-server check inter {check_inter_ms}ms fall 2 rise 1
{servers}
"""


class HaproxyServer(_Server):
    """``haproxy -f <cfg> -db`` on ``127.0.0.1:<port>`` in front of ``backends`` (see
    :func:`haproxy_config`); :meth:`start` returns once it accepts TCP connections (its
    health checks may not have found a replica up yet: callers wait on what they need)."""

    STOP_SIGNAL = signal.SIGUSR1  # soft stop: no new connections, existing ones finish
    # (bounded by stop_timeout_s, then SIGKILL)

    def __init__(self, backends: list[tuple[str, str]], *, check_inter_ms: int = 500,
                 start_timeout_s: float = 15.0, stop_timeout_s: float = 5.0,
                 base_dir: Path | None = None) -> None:
        self.backends = list(backends)
        self.check_inter_ms = check_inter_ms
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._base_dir = base_dir
        self.dir: Path | None = None
        self.port: int | None = None
        self._proc = _Process()
        # Two descriptors per proxied connection, within the hard limit (haproxy refuses to
        # start when its maxconn needs more than it may raise its own limit to).
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.maxconn = 20_000 if hard == resource.RLIM_INFINITY else \
            max(256, min(20_000, (hard - 100) // 2))

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (a node dials ``ws://`` on the same address)."""
        if self.port is None:
            raise ServerUnavailable("haproxy has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "haproxy.log"

    async def start(self) -> None:
        """Write the configuration and run haproxy in the foreground (``-db``)."""
        if self._proc.exited() is None and self._proc.popen is not None:
            return
        binary = find_binary("haproxy")
        if binary is None:
            raise ServerUnavailable("haproxy is not installed: 'make test' installs it when "
                                    "run as root (apt-get install haproxy)")
        if self.dir is None:
            base = str(self._base_dir) if self._base_dir is not None else None
            self.dir = Path(tempfile.mkdtemp(prefix="tether-haproxy-", dir=base))
        first = self.port is None
        for _attempt in range(3 if first else 1):
            if first:
                self.port = free_port()
            try:
                await self._launch(binary)
                return
            except ServerUnavailable as exc:
                if not first or "cannot bind" not in exc.reason.lower():
                    raise
        raise ServerUnavailable("haproxy could not bind a free loopback port in 3 tries")

    async def _launch(self, binary: str) -> None:
        assert self.dir is not None and self.port is not None
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(haproxy_config(self.port, self.backends,
                                      check_inter_ms=self.check_inter_ms,
                                      maxconn=self.maxconn))
        start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc.spawn([binary, "-f", str(cfg), "-db"], self.log_path, self.dir)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = self._proc.exited()
            if code is not None:
                self._proc.popen = None
                log = self.log_path.read_bytes()[start_offset:].decode(errors="replace")
                raise ServerUnavailable(
                    f"haproxy exited with {code} at start: {log[-LOG_TAIL_BYTES:].strip()}")
            if await self._accepts():
                return
            if time.monotonic() > deadline:
                await self.stop()
                raise ServerUnavailable(
                    f"haproxy did not accept connections within {self.start_timeout_s}s: "
                    f"{_tail(self.log_path)}")
            await asyncio.sleep(POLL_S)

    async def _accepts(self) -> bool:
        assert self.port is not None
        try:
            async with asyncio.timeout(2):
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return True
        except (OSError, TimeoutError):
            return False

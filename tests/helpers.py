"""Real processes on loopback for tests: a controller, nodes, and an operator API client.

Every process is started on port 0 (or a port it had before, for restarts), waited on by a
readiness condition, and torn down by the fixture that made it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

POLL_S = 0.02  # condition polling interval inside wait_until (not a synchronisation sleep)
FAST = ["--heartbeat-s", "0.5", "--stale-after-s", "3", "--offline-after-s", "6"]


def wait_until(predicate: Callable[[], T], *, timeout_s: float = 20.0,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may not be checkable yet
            last_exc = exc
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


async def until(cond: Callable[[], object], timeout_s: float = 30.0,
                what: str = "condition") -> None:
    """The event loop's ``wait_until``: yield until ``cond()`` is truthy (checked every
    10 ms); fail after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def tether_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli.main", *args]


class Proc:
    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(self.env or {})},
                                     start_new_session=True)
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ControllerProc(Proc):
    def __init__(self, data_dir: Path, *, port: int = 0, extra: list[str] | None = None,
                 tls: tuple[Path, Path] | None = None):
        self.data_dir = data_dir
        self.port = port
        self.extra = extra if extra is not None else list(FAST)
        self.tls = tls
        self.apis: list[Api] = []  # over TLS, closed before the controller stops (terminate)
        if tls is not None:
            self.extra += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__([], data_dir / "controller.log")

    def start(self) -> None:
        (self.data_dir / "controller.url").unlink(missing_ok=True)
        self.argv = tether_cmd("controller", "serve", "--data-dir", str(self.data_dir),
                               "--port", str(self.port), *self.extra)
        super().start()
        url = wait_until(self._url, what=f"controller in {self.data_dir} to listen")
        self.port = int(url.rsplit(":", 1)[1])

    def _url(self) -> str | None:
        if not self.alive():
            raise AssertionError(f"controller exited:\n{self.log()}")
        path = self.data_dir / "controller.url"
        return path.read_text().strip() if path.exists() else None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def api(self) -> Api:
        self.apis.append(Api(self.url, self.token,
                             verify=str(self.tls[0]) if self.tls else True))
        return self.apis[-1]

    def terminate(self, timeout_s: float = 15.0) -> int:
        # A kept-alive TLS connection of an open client holds a graceful stop for uvicorn's
        # whole grace (10 s): the server's close_notify waits for this process to answer.
        # Plain HTTP closes at once, and its clients stay usable across a restart.
        if self.tls is not None:
            for api in self.apis:
                api.client.close()
            self.apis.clear()
        return super().terminate(timeout_s)


class NodeProc(Proc):
    def __init__(self, state_dir: Path, node_id: str, *, extra: list[str] | None = None):
        self.state_dir = state_dir
        self.node_id = node_id
        state_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(tether_cmd("node", "run", "--state-dir", str(state_dir),
                                    *(extra or [])), state_dir / "node.log")

    def sidecar_pid(self) -> int | None:
        try:
            pid = int((self.state_dir / "sidecar.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kill_sidecar9(self) -> int:
        pid = self.sidecar_pid()
        assert pid is not None, "no sidecar runs"
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _pid_alive(pid), what=f"sidecar {pid} to die")
        return pid

    def kill_all9(self) -> None:
        """kill -9 of the runtime and its sidecar: the node vanishes without a goodbye."""
        pid = self.sidecar_pid()
        if self.alive():
            self.kill9()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _pid_alive(pid), what=f"sidecar {pid} to die")

    def cleanup(self) -> None:
        """Stop the runtime (goodbye) and make sure no sidecar outlives the test."""
        if self.alive():
            self.terminate()
        pid = self.sidecar_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not _pid_alive(pid), timeout_s=10, what="sidecar stop")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)

    def enroll(self, controller: ControllerProc, *, labels: dict[str, str] | None = None,
               flags: list[str] | None = None) -> None:
        token = controller.api().post("/api/v1/join-tokens", json={"uses": 1}).json()["token"]
        args = ["node", "enroll", "--controller", controller.url, "--token", token,
                "--node-id", self.node_id, "--state-dir", str(self.state_dir),
                *(flags or [])]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        subprocess.run(tether_cmd(*args), check=True, capture_output=True, timeout=30)


class Api:
    def __init__(self, url: str, token: str, verify: str | bool = True) -> None:
        self.url = url
        ctx = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        self.client = httpx.Client(base_url=url, timeout=15, verify=ctx,
                                   headers={"Authorization": f"Bearer {token}"})

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, **kw)

    def node(self, node_id: str) -> dict[str, Any]:
        resp = self.get(f"/api/v1/nodes/{node_id}")
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    def liveness(self, node_id: str) -> str:
        return str(self.node(node_id)["liveness"])

    def command(self, command_id: str) -> dict[str, Any]:
        resp = self.get(f"/api/v1/commands/{command_id}")
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    def submit(self, node_id: str, kind: str, args: dict[str, Any] | None = None,
               **body: Any) -> dict[str, Any]:
        resp = self.post(f"/api/v1/nodes/{node_id}/commands",
                         json={"kind": kind, "args": args or {}, **body})
        assert resp.status_code == 202, resp.text
        return resp.json()  # type: ignore[no-any-return]


def metric(text: str, name: str) -> float:
    """The one sample ``name`` (with its labels, as :func:`parse_metrics` keys it) in
    Prometheus text."""
    samples = parse_metrics(text)
    assert name in samples, (name, sorted(samples))
    return samples[name]


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, read by prometheus-client's own parser,
    keyed by its name and sorted labels (``tether_x_total{code="4401"}``); each family
    appears once."""
    families: set[str] = set()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"{family.name} exposed twice"
        families.add(family.name)
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def metric_types(text: str) -> dict[str, str]:
    """Each family's type (counter, gauge, histogram) by its name as the parser gives it
    (a counter's without ``_total``)."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}

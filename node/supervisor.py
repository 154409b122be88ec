"""``tether node supervise``: the small process that owns the node runtime and is the
authority over runtime self-updates (docs/operations.md "Upgrading").

It starts ``tether node run --supervised`` from the active slot (node/slots.py) and
restarts it when it asks to (exit :data:`EXIT_RESTART`, after SIGHUP) or crashes. When the
runtime leaves ``runtime/update-request.json`` (a verified runtime bundle, unpacked into the
inactive slot), it runs the update, one stage at a time (protocol/selfupdate.py STAGES):

1. ``applying``: the old runtime is told to stop (SIGHUP: it detaches as ``restarting``,
   so the sidecar keeps the controller session, and exits); SIGKILL past the deadline.
2. ``starting``: the candidate starts from the new slot.
3. ``attaching``: its status.json must name its pid, its version and an attached sidecar.
4. ``readiness``: its readiness tree must say ready.
5. ``replay``: the controller must have acked the outbox it inherited (node.db, shared by
   both versions).
6. promoted: the pointer switches (the commit point), the old slot stays as the backup.

Rule 1: each stage has a deadline (``stage_deadline_s``, wall clock, in update.json); a
candidate that exits, or a stage past its deadline, fails the update: the candidate is
stopped (SIGHUP, then SIGKILL), the record gets the recovery metadata (failing stage, slot,
backup path, the candidate's last log lines) and the previous slot's runtime starts again
(``restoring``) and reports it. Rule 2: a supervisor that starts with an undecided record
(it was killed mid-update) decides it by the pointer (protocol/selfupdate.py Rule 1): never
a half-promoted node, never a stuck ``applying`` or ``restarting``. Rule 3: every stage
change goes to the sidecar (``local.update``), which shows it in heartbeats; the sidecar
forgets a stage past its deadline on its own, so a dead supervisor cannot leave the node
``updating``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from tether.common.procfile import read_pid
from tether.protocol.frames import Frame
from tether.protocol.local import encode_local
from tether.protocol.selfupdate import (
    SlotPointer,
    UpdateInfo,
    UpdateRecord,
    UpdateRequest,
    resolve_interrupted,
)

from . import slots

logger = logging.getLogger(__name__)

EXIT_RESTART = 75  # a supervised runtime asks to be started again (EX_TEMPFAIL)
EXIT_STOPPED = 78  # a supervised runtime stopped for good: refused, or a final close code
MAX_RESTART_DELAY_S = 30.0


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    state_dir: Path
    runtime_args: tuple[str, ...] = ()  # passed on to `tether node run`
    stop_timeout_s: float = 20.0  # applying: the old runtime's graceful stop
    stage_deadline_s: float = 60.0  # each candidate stage: attaching, readiness, replay
    poll_s: float = 0.1
    restart_delay_s: float = 1.0  # after a crash, doubling to MAX_RESTART_DELAY_S


def _now_ms() -> int:
    return int(time.time() * 1000)


class Supervisor:
    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.proc_slot = "base"
        self._log: IO[bytes] | None = None
        self.record: UpdateRecord | None = None  # an update not decided yet
        self.stopping = False
        self.exit_code = 0
        self._restart_at: float | None = None
        self._restart_delay = config.restart_delay_s
        # restoring: (pid of the restored runtime, monotonic deadline) until it attaches
        self._restoring: tuple[int, float] | None = None

    # -- the process ------------------------------------------------------------------------

    def run(self) -> int:
        """Until SIGTERM/SIGINT (forwarded: the runtime says goodbye; 0) or the runtime stops
        for good (0 after a goodbye, 1 when refused or closed for good, EXIT_STOPPED)."""
        slots.runtime_dir(self.state_dir).mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        self._resume()
        self._start(slots.read_pointer(self.state_dir).slot)
        while True:
            if self.stopping:
                self._stop_runtime(signal.SIGTERM, self.config.stop_timeout_s)
                return self.exit_code
            if not self.tick():
                return self.exit_code
            time.sleep(self.config.poll_s)

    def tick(self) -> bool:
        """One step; False when the supervisor is done."""
        if self.record is not None:
            self._advance()
            return True
        self._check_restored()
        proc = self.proc
        if proc is not None and proc.poll() is not None:
            return self._runtime_exited(proc.returncode)
        if proc is None and self._restart_at is not None and time.monotonic() >= \
                self._restart_at:
            self._restart_at = None
            self._start(slots.read_pointer(self.state_dir).slot)
        request = slots.read_request(self.state_dir)
        if request is not None:
            self._begin(request)
        return True

    def _stop_orphan(self) -> None:
        """A runtime left by a supervisor that died (kill -9) is stopped as for an update
        (SIGHUP: it detaches, the session stays), so that this one starts its own."""
        pid = read_pid(self.state_dir / "runtime.pid")
        if pid is None:
            return
        logger.warning("stopping the runtime a previous supervisor left", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + self.config.stop_timeout_s
        while time.monotonic() < deadline:
            if read_pid(self.state_dir / "runtime.pid") != pid:
                return
            time.sleep(self.config.poll_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _runtime_exited(self, code: int) -> bool:
        self.proc = None
        self._close_log()
        if code == EXIT_RESTART:
            logger.info("runtime asked to restart", extra={"slot": self.proc_slot})
            self._start(slots.read_pointer(self.state_dir).slot)
            return True
        if code in (0, EXIT_STOPPED):
            logger.info("runtime stopped", extra={"exit_code": code})
            self.exit_code = 0 if code == 0 else 1
            return False
        logger.error("runtime crashed; starting it again",
                     extra={"exit_code": code, "delay_s": self._restart_delay})
        self._restart_at = time.monotonic() + self._restart_delay
        self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY_S)
        return True

    def _start(self, slot: str, *, fresh_log: bool = False) -> subprocess.Popen[bytes]:
        """Start ``tether node run --supervised`` from ``slot`` (node/slots.py)."""
        env = dict(os.environ)
        path = slots.slot_path(self.state_dir, slot)
        if path is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(path), *filter(None, [os.environ.get("PYTHONPATH")])])
        log = slots.log_path(self.state_dir, slot)
        log.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = log.open("wb" if fresh_log else "ab")
        argv = [sys.executable, "-P", "-m", "tether.cli.main", "node", "run", "--supervised",
                "--state-dir", str(self.state_dir), *self.config.runtime_args]
        # -P: the working directory is not put on sys.path, so only PYTHONPATH (the slot) or
        # the installed package can provide `tether`; cwd is the state dir for the same reason
        self.proc = subprocess.Popen(argv, env=env, cwd=self.state_dir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.proc_slot = slot
        logger.info("runtime started", extra={"slot": slot, "pid": self.proc.pid})
        return self.proc

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _stop_runtime(self, sig: int, timeout_s: float) -> int | None:
        """Signal the runtime and wait for it (SIGKILL past ``timeout_s``); its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("runtime did not stop in time; killed", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        self.proc = None
        self._close_log()
        return proc.returncode

    # -- updates ----------------------------------------------------------------------------

    def _resume(self) -> None:
        """Rule 2: an undecided record from a supervisor that died mid-update is decided by
        the pointer; a request it had taken already is dropped."""
        record = slots.read_record(self.state_dir)
        if record is None or record.outcome is not None:
            return
        if record.candidate_pid is not None and _is_runtime(record.candidate_pid):
            with contextlib.suppress(ProcessLookupError):  # a candidate that never attached
                os.kill(record.candidate_pid, signal.SIGKILL)
        pointer = slots.read_pointer(self.state_dir)
        decided = resolve_interrupted(record, pointer, _now_ms(),
                                      "the supervisor stopped during the update")
        if decided.outcome == "rolled_back":
            decided = replace(decided, backup_path=slots.backup_path(
                self.state_dir, decided.previous.slot), log_tail=slots.log_tail(
                slots.log_path(self.state_dir, record.request.slot)))
        slots.write_record(self.state_dir, decided)
        request = slots.read_request(self.state_dir)
        if request is not None and request.update_id == record.request.update_id:
            slots.request_path(self.state_dir).unlink(missing_ok=True)
        logger.warning("decided an update left undecided", extra={
            "update_id": record.request.update_id, "outcome": decided.outcome,
            "stage": record.stage})
        self._notify(UpdateInfo())

    def _begin(self, request: UpdateRequest) -> None:
        self._restart_at = None  # a crashed runtime is replaced by the candidate
        pointer = slots.read_pointer(self.state_dir)
        record = UpdateRecord(request=request, previous=pointer, stage="applying",
                              stage_started_ms=0, deadline_ms=0)
        record = record.at("applying", _now_ms(), self.config.stop_timeout_s)
        path = slots.slot_path(self.state_dir, request.slot)
        problem = None
        if request.slot == pointer.slot:
            problem = f"slot {request.slot} is the active one"
        elif path is None or not (path / "tether" / "cli" / "main.py").is_file():
            problem = f"slot {request.slot} holds no runtime"
        # The record first, then the request goes (Rule 2: the record is what is resumed).
        self.record = record
        slots.write_record(self.state_dir, record)
        slots.request_path(self.state_dir).unlink(missing_ok=True)
        logger.info("runtime update requested", extra={
            "update_id": request.update_id, "slot": request.slot, "version": request.version})
        if problem is not None:
            self._decide_failed(problem, restart=False)
            return
        self._notify(self._info(record))
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGHUP)  # detach as `restarting` and exit

    def _advance(self) -> None:
        record = self.record
        assert record is not None
        now = _now_ms()
        proc = self.proc
        exited = proc is None or proc.poll() is not None
        if record.stage == "applying":
            if not exited and now >= record.deadline_ms:
                assert proc is not None
                logger.error("old runtime did not stop in time; killed", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
                exited = True
            if exited:
                self.proc = None
                self._close_log()
                self._set(record.at("starting", now, self.config.stage_deadline_s))
                cand = self._start(record.request.slot, fresh_log=True)
                self._set(replace(self.record or record, candidate_pid=cand.pid).at(
                    "attaching", _now_ms(), self.config.stage_deadline_s))
            return
        if exited:
            code = None if proc is None else proc.returncode
            self._decide_failed(f"the candidate exited with code {code} during "
                                f"{record.stage}")
            return
        status = self._candidate_status(record)
        if record.stage == "attaching" and status is not None:
            version = status.get("version")
            if record.request.version and version != record.request.version:
                self._decide_failed(f"the candidate runs version {str(version)[:64]!r}, "
                                    f"the slot holds {record.request.version!r}")
                return
            if (status.get("sidecar") or {}).get("attached") is True:
                last = (status.get("outbox") or {}).get("last")
                self._set(replace(record, inherited_outbox=last if isinstance(last, int)
                                  and last >= 0 else 0).at(
                    "readiness", now, self.config.stage_deadline_s))
                return
        elif record.stage == "readiness" and status is not None:
            if (status.get("readiness") or {}).get("ready") is True:
                self._set(record.at("replay", now, self.config.stage_deadline_s))
                return
        elif record.stage == "replay" and status is not None:
            acked = (status.get("outbox") or {}).get("acked")
            if isinstance(acked, int) and acked >= (record.inherited_outbox or 0):
                self._promote(record)
                return
        if now >= record.deadline_ms:
            self._decide_failed(f"{record.stage} did not complete within "
                                f"{self.config.stage_deadline_s:g} s")

    def _candidate_status(self, record: UpdateRecord) -> dict[str, Any] | None:
        """The candidate's status.json, when it is the candidate's (its pid) and readable."""
        try:
            status = json.loads((self.state_dir / "status.json").read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(status, dict) or status.get("pid") != record.candidate_pid:
            return None
        return status

    def _promote(self, record: UpdateRecord) -> None:
        req = record.request
        slots.write_pointer(self.state_dir, SlotPointer(
            slot=req.slot, version=req.version, name=req.name,
            bundle_version=req.bundle_version, update_id=req.update_id))
        decided = replace(record, outcome="promoted", decided_at_ms=_now_ms())
        slots.write_record(self.state_dir, decided)
        self.record = None
        self._restart_delay = self.config.restart_delay_s
        logger.info("runtime update promoted", extra={"update_id": req.update_id,
                                                      "slot": req.slot, "version": req.version})
        self._notify(UpdateInfo())

    def _decide_failed(self, reason: str, *, restart: bool = True) -> None:
        """Rule 1: stop the candidate, record the recovery metadata, start the backup."""
        record = self.record
        assert record is not None
        if restart:
            self._stop_runtime(signal.SIGHUP, self.config.stop_timeout_s)
        previous = record.previous.slot
        decided = replace(
            record, outcome="rolled_back", failed_stage=record.stage, reason=reason[:500],
            backup_path=slots.backup_path(self.state_dir, previous),
            log_tail=slots.log_tail(slots.log_path(self.state_dir, record.request.slot)),
            decided_at_ms=_now_ms())
        slots.write_record(self.state_dir, decided)
        self.record = None
        logger.error("runtime update failed; restoring the previous slot", extra={
            "update_id": record.request.update_id, "stage": record.stage, "detail": reason,
            "slot": previous})
        if not restart:
            self._notify(UpdateInfo())
            return
        restoring = decided.at("restoring", _now_ms(), self.config.stage_deadline_s)
        self._notify(self._info(restoring, slot=previous, version=record.previous.version))
        proc = self._start(previous)
        self._restoring = (proc.pid, time.monotonic() + self.config.stage_deadline_s)

    def _check_restored(self) -> None:
        """``restoring`` ends when the restored runtime attached (or at its deadline)."""
        if self._restoring is None:
            return
        pid, until = self._restoring
        try:
            status = json.loads((self.state_dir / "status.json").read_bytes())
        except (OSError, ValueError):
            status = {}
        attached = isinstance(status, dict) and status.get("pid") == pid and \
            (status.get("sidecar") or {}).get("attached") is True
        if attached or time.monotonic() >= until:
            self._restoring = None
            self._notify(UpdateInfo())

    def _set(self, record: UpdateRecord) -> None:
        self.record = record
        slots.write_record(self.state_dir, record)
        logger.info("runtime update stage", extra={"stage": record.stage,
                                                   "update_id": record.request.update_id})
        self._notify(self._info(record))

    def _info(self, record: UpdateRecord, *, slot: str | None = None,
              version: str | None = None) -> UpdateInfo:
        deadline_s = max(0.0, (record.deadline_ms - record.stage_started_ms) / 1000)
        return UpdateInfo(stage=record.stage, version=version or record.request.version,
                          slot=slot or record.request.slot, deadline_s=deadline_s)

    def _notify(self, update: UpdateInfo) -> None:
        """Rule 3: the stage to the sidecar (best effort: no sidecar, nothing to show)."""
        frame = Frame(t="local.update", b={"update": update.to_map()})
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(str(self.state_dir / "sidecar.sock"))
                sock.sendall(encode_local(frame))
                sock.recv(256)  # local.updated: the heartbeat carrying it went (or EOF)
        except OSError as exc:
            logger.warning("could not tell the sidecar the update stage",
                           extra={"detail": str(exc)})


def _is_runtime(pid: int) -> bool:
    """``pid`` runs a supervised runtime (its command line says so): not a reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"node\0run\0--supervised" in cmdline


def run_supervisor(config: SupervisorConfig) -> int:
    """The process: one supervisor per state dir (a lock), SIGTERM/SIGINT stop it."""
    state_dir = config.state_dir
    rdir = slots.runtime_dir(state_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(rdir / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        other = read_pid(rdir / "supervisor.pid")
        raise SystemExit(f"error: a supervisor (pid {other}) already runs for {state_dir}; "
                         "stop it first") from None
    (rdir / "supervisor.pid").write_text(f"{os.getpid()}\n")
    supervisor = Supervisor(config)

    def stop(signum: int, frame: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return supervisor.run()
    finally:
        with contextlib.suppress(OSError):
            (rdir / "supervisor.pid").unlink()
        os.close(lock_fd)

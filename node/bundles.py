"""The node's bundle plane (issue 15; docs/protocol.md "The node's bundle plane"): an
``update.now`` offer is downloaded (node/bundlefetch.py), checked, unpacked beside the
versions, switched to atomically, run through the app supervisor and watched through its
probation; every step is reported as class A ``bundle.status``.

On disk, under ``<state-dir>/bundles/`` (docs/operations.md "Bundles on a node")::

    <name>/state.json            the name's state: active, last_known_good, highest, ...
    <name>/v<version>-<hex>/     an unpacked version (the active one and the LKG one)
    <name>/.stage-<hex>/         a version being unpacked (never referenced)
    .downloads/<name>-<version>-<sha>.part

Rule 1 (one commit point): ``state.json`` is only ever replaced whole (tmp, fsync, rename,
fsync of the directory). A version directory is unpacked and fsynced under a staging name,
renamed into place, and only then named by a new ``state.json``. A crash (kill -9) at any
point leaves the old ``state.json`` (the whole old version) or the new one (the whole new
version); :meth:`BundleDisk.restore` deletes whatever ``state.json`` does not name, so a
restart ends a half-done switch the same way every time.
Rule 2 (monotonic): ``highest`` is the highest version of the name ever activated; it is
written in the same ``state.json`` as the switch and never lowered (a rollback keeps it).
Rule 3 (bounded): a name keeps at most two version directories, the active one and the
last known good; an attempt per name at a time (a newer offer supersedes an unfinished
one), at most :data:`MAX_DOWNLOADS` downloading and checking at once.
Rule 4 (restart): the runtime never adopts processes (node/apps.py): a restart starts the
active version's app again (unless ``bundle.stop`` marked the name ``stopped``: Rule 5);
an attempt the restart interrupted ends ``failed``
``interrupted`` (its command too, by the store's recovery). An attempt past its switch
leaves the new version active (it is whole), unconfirmed: its probation is not resumed.
Rule 5 (stopped for good): ``bundle.stop`` writes ``stopped: true`` into ``state.json``
(the commit point) before it stops the app: from then on no restart starts it (the app is
declared, shown ``stopped``); the next switch (a later ``update.now``) clears the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn, Protocol, TypeVar

from tether.common import __version__
from tether.common.tasks import cancel_and_wait
from tether.protocol.appspec import AppSpec as BundleApp
from tether.protocol.appspec import HealthSpec, parse_app_toml
from tether.protocol.bundle import (
    APP_TOML,
    TRUSTED_PUBLISHERS_FILE,
    BundleError,
    FileEntry,
    Manifest,
    check_activation,
    check_payload,
    format_time,
    open_payload,
    parse_trusted_publishers,
    policy_mismatch,
    read_bundle,
    verify_payload,
    verify_signatures,
)
from tether.protocol.errors import BadFrame
from tether.protocol.update import (
    MAX_REASON_CHARS,
    REJECT_CODES,
    BundleStatus,
    BundleStop,
    UpdateOffer,
    parse_bundle_status,
)

from .apps import AppSpec, AppSupervisor
from .bundlefetch import DownloadFailed, Source, download
from .executors.exec import ExecOutcome
from .policy import Policy, Refused
from .selfupdate import InstallFailed

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_DOWNLOADS = 2  # attempts downloading or checking at once (Rule 3)
MAX_ATTEMPTS = 64  # names with an unfinished attempt; past it an offer fails at once
MAX_HEALTH_TIMEOUT_S = 30.0
DETAIL_LINES = 10
DETAIL_EXITS = 10
STOPPED_REASON = "stopped by bundle.stop; a later offer starts it again"
_CHUNK = 1 << 16


class RuntimeInstaller(Protocol):
    """Takes a verified ``runtime`` bundle (node/selfupdate.py, the supervisor's side).
    ``install`` returns once the supervisor holds the request: this runtime is replaced
    soon after, and the runtime that reads the supervisor's decision reports the outcome
    and finishes the command. It raises :class:`~.selfupdate.InstallFailed` when nothing
    changed. The file at ``bundle_file`` is the node's until ``install`` returns.
    ``handed_over(command_id)``: the command belongs to the supervisor now; this runtime
    must neither report its attempt ``interrupted`` nor finish it."""

    async def install(self, offer: UpdateOffer, manifest: Manifest, bundle_file: Path, *,
                      command_id: str | None = None) -> None: ...

    def handed_over(self, command_id: str) -> bool: ...

    def promoted_version(self, name: str) -> int | None:
        """The version of bundle ``name`` the active runtime slot holds (None: another
        bundle or the installed package): the downgrade check's floor for ``runtime``."""
        ...


class _HandedOver(Exception):
    """A runtime bundle's attempt ends in this runtime: the supervisor has it."""


class StopRefused(Exception):
    """A ``bundle.stop`` that changes nothing: the message says why and what to do."""


class AttemptFailed(Exception):
    """An attempt ends in ``state`` (rejected | failed | rolled_back) with ``code``."""

    def __init__(self, state: str, code: str, reason: str,
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.state, self.code, self.reason = state, code, reason
        self.detail = detail or {}


# --- on disk ---------------------------------------------------------------------------


@dataclass(slots=True)
class Slot:
    version: int
    dir: str
    healthy: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "dir": self.dir, "healthy": self.healthy}

    @classmethod
    def parse(cls, raw: Any) -> Slot | None:
        if not isinstance(raw, dict):
            return None
        version, name = raw.get("version"), raw.get("dir")
        if (not isinstance(version, int) or isinstance(version, bool) or version < 1
                or not isinstance(name, str) or not name.startswith("v") or "/" in name):
            return None
        return cls(version, name, raw.get("healthy") is True)


@dataclass(slots=True)
class NameState:
    """One name's ``state.json``."""

    active: Slot | None = None
    last_known_good: Slot | None = None
    highest: int | None = None
    attempt: dict[str, Any] | None = None  # the unfinished attempt: version, command_id
    last: dict[str, Any] = field(default_factory=dict)  # state, version, reason
    stopped: bool = False  # Rule 5: bundle.stop; no start restores the app

    def as_dict(self) -> dict[str, Any]:
        return {"active": self.active.as_dict() if self.active else None,
                "last_known_good": self.last_known_good.as_dict()
                if self.last_known_good else None,
                "highest": self.highest, "attempt": self.attempt, "last": self.last,
                "stopped": self.stopped}

    @classmethod
    def parse(cls, raw: Any) -> NameState:
        if not isinstance(raw, dict):
            return cls()
        highest = raw.get("highest")
        attempt, last = raw.get("attempt"), raw.get("last")
        return cls(Slot.parse(raw.get("active")), Slot.parse(raw.get("last_known_good")),
                   highest if isinstance(highest, int) and not isinstance(highest, bool)
                   else None, attempt if isinstance(attempt, dict) else None,
                   last if isinstance(last, dict) else {}, raw.get("stopped") is True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` replaced whole by ``data``: tmp, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class BundleDisk:
    """The on-disk half (Rules 1-3), synchronous: the manager calls it in a thread.
    ``step(label)`` is called after each step of an activation (tests make it crash)."""

    def __init__(self, root: Path, *, step: Callable[[str], None] = lambda label: None
                 ) -> None:
        self.root = root
        self.step = step

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def name_dir(self, name: str) -> Path:
        return self.root / name

    def load(self, name: str) -> NameState:
        try:
            return NameState.parse(json.loads((self.root / name / "state.json").read_bytes()))
        except (OSError, ValueError):
            return NameState()

    def save(self, name: str, st: NameState) -> None:
        d = self.root / name
        if not d.is_dir():
            d.mkdir(parents=True)
            _fsync_dir(self.root)
        write_atomic(d / "state.json", json.dumps(st.as_dict(), sort_keys=True).encode())

    def part_path(self, offer: UpdateOffer) -> Path:
        return (self.root / ".downloads"
                / f"{offer.name}-{offer.version}-{offer.sha256[:16]}.part")

    def version_dir(self, name: str, slot: Slot) -> Path:
        return self.root / name / slot.dir

    def restore(self, name: str) -> tuple[NameState, dict[str, Any] | None]:
        """After a start: delete what ``state.json`` does not name (staging, an unswitched
        version, tmp files); returns the state and the attempt a stop interrupted (cleared
        from the file)."""
        st = self.load(name)
        keep = {"state.json"} | {s.dir for s in (st.active, st.last_known_good) if s}
        d = self.root / name
        for entry in d.iterdir() if d.is_dir() else ():
            if entry.name not in keep:
                _remove(entry)
        for slot_name in ("active", "last_known_good"):
            slot = getattr(st, slot_name)
            if slot is not None and not (d / slot.dir).is_dir():
                setattr(st, slot_name, None)  # removed by hand: nothing to run
        interrupted, st.attempt = st.attempt, None
        if interrupted is not None or (d.is_dir() and keep != {"state.json"}):
            self.save(name, st)
        return st, interrupted

    def clear_downloads(self) -> None:
        _remove(self.root / ".downloads")

    def unpack(self, name: str, version: int, bundle_file: Path) -> Slot:
        """Unpack (checking every byte again) under a staging name, fsync, rename into
        place; returns the new slot, not yet named by state.json."""
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)
        stage = d / f".stage-{token}"
        stage.mkdir()
        writer = _Unpacker(stage, self.step)
        try:
            with bundle_file.open("rb") as f:
                parts = read_bundle(f)
                verify_payload(open_payload(f, parts), parts.manifest, sink=writer.sink)
            writer.close()
            for sub in sorted({p.parent for p in stage.rglob("*")}, reverse=True):
                _fsync_dir(sub)
            self.step("staged")
            final = f"v{version}-{token}"
            os.replace(stage, d / final)
            _fsync_dir(d)
        except BaseException:
            writer.close()
            _remove(stage)
            raise
        self.step("placed")
        return Slot(version, final)

    def switch(self, name: str, slot: Slot) -> NameState:
        """The commit point: ``slot`` active; the last known good is the previous active
        when it was confirmed healthy, else the previous LKG; highest raised."""
        st = self.load(name)
        if st.active is not None and st.active.healthy:
            st.last_known_good = st.active
        st.active = slot
        st.highest = max(st.highest or 0, slot.version)
        st.stopped = False  # Rule 5: an offered version runs again
        self.save(name, st)
        self.step("switched")
        return st

    def prune(self, name: str) -> None:
        """Delete the version directories state.json does not name (Rule 3)."""
        st = self.load(name)
        keep = {"state.json"} | {s.dir for s in (st.active, st.last_known_good) if s}
        d = self.root / name
        for entry in d.iterdir() if d.is_dir() else ():
            if entry.name.startswith("v") and entry.name not in keep:
                _remove(entry)
        self.step("pruned")


def bundles_on_disk(state_dir: Path) -> dict[str, dict[str, Any]]:
    """What ``state.json`` files say, for ``tether node status`` without a runtime."""
    disk = BundleDisk(state_dir / "bundles")
    out: dict[str, dict[str, Any]] = {}
    for name in disk.names():
        st = disk.load(name)
        out[name] = {"active": st.active.version if st.active else None,
                     "last_known_good": st.last_known_good.version
                     if st.last_known_good else None,
                     "state": "stopped" if st.stopped else st.last.get("state"),
                     "version": st.last.get("version"),
                     "reason": st.last.get("reason", "")}
    return out


class _Unpacker:
    """verify_payload's sink: each file written under ``root`` with the manifest's mode,
    fsynced; directories made as paths need them (paths are checked before the sink)."""

    def __init__(self, root: Path, step: Callable[[str], None]) -> None:
        self.root, self.step = root, step
        self.f: IO[bytes] | None = None
        self.files = 0

    def sink(self, path: str, entry: FileEntry, chunk: bytes) -> None:
        if not chunk:
            self.close()
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         entry.mode)
            os.fchmod(fd, entry.mode)
            self.f = os.fdopen(fd, "wb")
            self.files += 1
            if self.files == 1:
                self.step("staging")
            return
        assert self.f is not None
        self.f.write(chunk)

    def close(self) -> None:
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


# --- the checks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    manifest: Manifest
    app: BundleApp


def verify_bundle(path: Path, offer: UpdateOffer, *, state_dir: Path, policy: Policy,
                  highest: int | None, now: datetime,
                  runner_version: str = __version__) -> Verified:
    """Every check before anything activates, in order: layout and manifest (and that it
    is the offered name and version), signatures against the node's trusted publishers
    and threshold, app.tar.gz's size and sha256, each file's, tether-app.toml, the
    activation rules (kind, expiry, runner version, downgrade) and the node's policy.
    Raises :class:`BundleError` with the code of the first that fails."""
    try:
        trusted = parse_trusted_publishers((state_dir / TRUSTED_PUBLISHERS_FILE).read_bytes())
    except FileNotFoundError:
        raise BundleError("untrusted_key", f"this node trusts no publisher key (no "
                          f"{TRUSTED_PUBLISHERS_FILE}; add one with 'tether node trust "
                          "KEY.pub')") from None
    except BundleError as exc:
        raise BundleError("untrusted_key", f"{TRUSTED_PUBLISHERS_FILE} is unreadable: "
                          f"{exc.message}") from None
    if not trusted.keys:
        raise BundleError("untrusted_key", f"{TRUSTED_PUBLISHERS_FILE} holds no key")
    toml = bytearray()
    with path.open("rb") as f:
        parts = read_bundle(f)
        m = parts.manifest
        if (m.name, m.version) != (offer.name, offer.version):
            raise BundleError("bad_manifest", f"the file holds {m.name} version {m.version}, "
                              f"the offer names {offer.name} version {offer.version}")
        result = verify_signatures(parts.manifest_bytes, parts.signatures, trusted.keys,
                                   trusted.threshold)
        if not result.ok:
            raise BundleError(result.code or "bad_signature", result.message)
        digest, size = hashlib.sha256(), 0
        payload = open_payload(f, parts)
        while chunk := payload.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        check_payload(size, digest.hexdigest(), m)

        def keep_toml(name: str, entry: FileEntry, chunk: bytes) -> None:
            if name == APP_TOML:
                toml.extend(chunk)

        verify_payload(open_payload(f, parts), m, sink=keep_toml)
    app = parse_app_toml(bytes(toml))
    code = check_activation(m, now, runner_version, highest, offer.rollback,
                            expected_kind=offer.kind)
    if code is not None:
        raise BundleError(code, {
            "wrong_kind": f"the bundle is of kind {m.kind!r}, offered as {offer.kind!r}",
            "bundle_expired": f"the manifest expired at {format_time(m.expires_at)}",
            "bundle_not_yet_valid": f"the manifest is valid from {format_time(m.created_at)}",
            "runner_too_old": f"the bundle needs runner {m.min_runner_version}, this node "
                              f"runs {runner_version}",
            "downgrade": f"version {m.version} is below {highest}, the highest this node "
                         "activated, and the offer carries no rollback",
        }.get(code, code))
    mismatch = policy_mismatch(m.policy, kind_allowed=lambda k: _kind_allowed(policy, k),
                               executable_allowed=lambda e: _exe_allowed(policy, e))
    if mismatch is not None:
        raise BundleError("policy_mismatch", mismatch)
    return Verified(m, app)


def _kind_allowed(policy: Policy, kind: str) -> bool:
    return kind not in policy.deny_kinds and (policy.allow_kinds is None
                                               or kind in policy.allow_kinds)


def _exe_allowed(policy: Policy, executable: str) -> bool:
    """A program inside the bundle (a relative path with a slash) is the signed bundle's
    own and allowed; any other is judged as an exec's ``argv[0]`` is."""
    if "/" in executable and not executable.startswith("/"):
        return True
    try:
        policy.plan_exec({"argv": [executable]})
    except Refused:
        return False
    return True


def app_spec(name: str, bundle_dir: Path, app: BundleApp) -> AppSpec:
    """The supervisor's declaration of a bundle's app: relative program paths resolve
    inside ``bundle_dir``, which is also its working directory. Both are absolute: a
    relative state dir (``--state-dir n-a``) would make the program's path relative to the
    working directory it names, and the exec fail (127)."""
    bundle_dir = bundle_dir.absolute()
    return AppSpec(name=name, argv=_resolve(app.argv, bundle_dir), env=dict(app.env),
                   cwd=str(bundle_dir), restart=app.restart)


def _resolve(argv: tuple[str, ...], bundle_dir: Path) -> tuple[str, ...]:
    """A relative program path (``./run``) as an absolute path inside ``bundle_dir``."""
    prog = argv[0]
    if "/" in prog and not prog.startswith("/"):
        prog = str(bundle_dir.absolute() / prog)
    return (prog, *argv[1:])


# --- the manager -----------------------------------------------------------------------


@dataclass(slots=True)
class _Attempt:
    offer: UpdateOffer
    command_id: str
    task: asyncio.Task[BundleStatus] | None = None
    superseded_by: int | None = None


class BundleManager:
    """Runs ``update.now`` attempts (:meth:`run`) and restores active bundles
    (:meth:`restore`). ``emit`` queues a ``bundle.status`` (class A, the outbox)."""

    def __init__(self, *, state_dir: Path, apps: AppSupervisor, policy: Policy,
                 source: Callable[[], Source], emit: Callable[[BundleStatus], Awaitable[None]],
                 installer: RuntimeInstaller | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 step: Callable[[str], None] = lambda label: None) -> None:
        self.state_dir = state_dir
        self.disk = BundleDisk(state_dir / "bundles", step=step)
        self.apps = apps
        self.policy = policy
        self.source = source
        self.emit = emit
        self.installer = installer
        self.now = now
        self._attempts: dict[str, _Attempt] = {}
        self._downloads = asyncio.Semaphore(MAX_DOWNLOADS)
        self._locks: dict[str, asyncio.Lock] = {}
        self._exits: dict[str, asyncio.Queue[ExecOutcome]] = {}
        self._view: dict[str, dict[str, Any]] = {}
        self._owned: set[str] = set()  # apps this manager declared (bundle names)
        # Offers recovered at start wait for restore's clean-up of the same directories.
        self._restored = asyncio.Event()
        apps.on_exit = self._on_exit

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """``{name: {active, last_known_good, state, version, reason}}``."""
        return {name: dict(v) for name, v in sorted(self._view.items())}

    def _note(self, name: str, st: NameState, state: str | None, version: int | None,
              reason: str) -> None:
        self._view[name] = {"active": st.active.version if st.active else None,
                            "last_known_good": st.last_known_good.version
                            if st.last_known_good else None,
                            "state": state, "version": version, "reason": reason}

    async def _report(self, offer: UpdateOffer, state: str, *, code: str | None = None,
                      reason: str = "", detail: dict[str, Any] | None = None
                      ) -> BundleStatus:
        st = await asyncio.to_thread(self.disk.load, offer.name)
        reason = reason[:MAX_REASON_CHARS]
        status = BundleStatus(
            name=offer.name, version=offer.version, state=state,
            at_ms=int(time.time() * 1000), code=code, reason=reason,
            rollout_id=offer.rollout_id, kind=offer.kind,
            active=st.active.version if st.active else None,
            last_known_good=st.last_known_good.version if st.last_known_good else None,
            detail=detail or {})
        try:
            parse_bundle_status(status.body())  # what leaves is what the contract parses
        except BadFrame:
            status = dataclasses.replace(status, detail={})
        self._note(offer.name, st, state, offer.version, reason)
        if state in ("healthy", "rejected", "failed", "rolled_back"):
            st.last = {"state": state, "version": offer.version, "reason": reason}
            await asyncio.to_thread(self._save_last, offer.name, st.last)
        await self.emit(status)
        return status

    def _save_last(self, name: str, last: dict[str, Any]) -> None:
        if (self.disk.root / name / "state.json").exists():
            st = self.disk.load(name)
            st.last = last
            self.disk.save(name, st)

    # -- restart --------------------------------------------------------------------------

    async def restore(self) -> None:
        """At start (after the supervisor's ``start_all``): Rule 1's clean-up, the active
        apps started again, interrupted attempts reported ``failed`` ``interrupted``.
        Attempts (:meth:`run`) wait for it."""
        try:
            await self._restore()
        except Exception:  # the node starts even with a damaged bundles directory
            logger.exception("restoring the bundles failed")
        finally:
            self._restored.set()

    async def _restore(self) -> None:
        await asyncio.to_thread(self.disk.clear_downloads)
        for name in await asyncio.to_thread(self.disk.names):
            st, interrupted = await asyncio.to_thread(self.disk.restore, name)
            last = st.last
            self._note(name, st, last.get("state"), last.get("version"),
                       str(last.get("reason", "")))
            if st.stopped and st.active is not None:  # Rule 5
                self._note(name, st, "stopped", st.active.version, STOPPED_REASON)
            if st.active is not None:
                try:
                    await self._start_app(name, st.active, start=not st.stopped)
                except (BundleError, OSError) as exc:
                    logger.error("a bundle's app cannot start", extra={
                        "bundle": name, "detail": str(exc)[:200]})
            if interrupted is not None and not self._handed_over(
                    interrupted.get("command_id")):
                version = interrupted.get("version")
                if isinstance(version, int) and version >= 1:
                    kind = "runtime" if interrupted.get("kind") == "runtime" else "app"
                    offer = UpdateOffer(name=name, version=version, kind=kind,
                                        sha256="0" * 64, size=1,
                                        rollout_id=interrupted.get("rollout_id"))
                    await self._report(offer, "failed", code="interrupted",
                                       reason="the runtime stopped during the attempt; the "
                                       "node is on a whole version")

    async def _start_app(self, name: str, slot: Slot, *, start: bool = True) -> None:
        """Declare the slot's app to the supervisor and (``start``) start it."""
        d = self.disk.version_dir(name, slot)
        app = parse_app_toml(await asyncio.to_thread((d / APP_TOML).read_bytes))
        self._owned.add(name)
        self.apps.put(app_spec(name, d, app))
        if start:
            self.apps.start(name)

    # -- bundle.stop ----------------------------------------------------------------------

    async def stop_app(self, stop: BundleStop) -> dict[str, Any]:
        """``bundle.stop`` (Rule 5): the name marked ``stopped`` in ``state.json`` first
        (the commit point: a crash after it leaves the app stopped at the next start),
        then its app stopped. Idempotent. Returns the command's result ``{name, version,
        state: "stopped", was_running}``. Raises :class:`StopRefused` when the name has no
        active version here or an offer of it is unfinished (nothing changed)."""
        await self._restored.wait()
        name = stop.name
        attempt = self._attempts.get(name)
        if attempt is not None:
            raise StopRefused(f"an update of bundle {name!r} to version "
                              f"{attempt.offer.version} is in progress; stop it after it "
                              "ends")
        async with self._locks.setdefault(name, asyncio.Lock()):
            st = await asyncio.to_thread(self.disk.load, name)
            if st.active is None:
                raise StopRefused(f"no version of bundle {name!r} is active on this node")
            if not st.stopped:
                st.stopped = True
                await asyncio.to_thread(self.disk.save, name, st)
            was_running = name in self.apps.specs and await self.apps.stop(name)
        self._note(name, st, "stopped", st.active.version, STOPPED_REASON)
        return {"name": name, "version": st.active.version, "state": "stopped",
                "was_running": was_running}

    async def stop(self) -> None:
        """Cancel every unfinished attempt (the runtime is stopping): each ends
        ``failed`` ``interrupted``."""
        for attempt in list(self._attempts.values()):
            if attempt.task is not None:
                await cancel_and_wait(attempt.task)

    # -- an attempt -----------------------------------------------------------------------

    async def run(self, command_id: str, offer: UpdateOffer) -> BundleStatus | None:
        """Run the offer to its terminal status (healthy, rejected, failed, rolled_back).
        A newer offer for the same name supersedes this one (``failed`` ``superseded``).
        None: a runtime bundle handed to the supervisor (:class:`RuntimeInstaller`); the
        command is not this runtime's to finish."""
        await self._restored.wait()
        old = self._attempts.get(offer.name)
        if old is not None and old.task is not None:
            old.superseded_by = offer.version
            await cancel_and_wait(old.task)
        if len(self._attempts) >= MAX_ATTEMPTS:
            return await self._report(offer, "failed", code="download_failed",
                                      reason=f"more than {MAX_ATTEMPTS} updates in flight")
        attempt = _Attempt(offer, command_id)
        self._attempts[offer.name] = attempt
        attempt.task = asyncio.create_task(self._attempt(attempt),
                                           name=f"bundle:{offer.name}")
        try:
            await asyncio.wait({attempt.task})
        finally:
            if not attempt.task.done():  # our own caller is cancelled: the runtime stops
                await cancel_and_wait(attempt.task)
            if self._attempts.get(offer.name) is attempt:
                del self._attempts[offer.name]
        if not attempt.task.cancelled():
            return attempt.task.result()
        if self._handed_over(command_id):  # the stop that follows the hand-over
            return None
        await asyncio.to_thread(self._clear_attempt, offer.name, command_id)
        if attempt.superseded_by is not None:
            return await self._report(offer, "failed", code="superseded",
                                      reason=f"version {attempt.superseded_by} was offered "
                                      "before this one finished")
        return await self._report(offer, "failed", code="interrupted",
                                  reason="the runtime stopped during the attempt")

    def _mark_attempt(self, offer: UpdateOffer, command_id: str) -> None:
        st = self.disk.load(offer.name)
        st.attempt = {"version": offer.version, "command_id": command_id,
                      "rollout_id": offer.rollout_id, "kind": offer.kind}
        self.disk.save(offer.name, st)

    def _clear_attempt(self, name: str, command_id: str) -> None:
        st = self.disk.load(name)
        if st.attempt is not None and st.attempt.get("command_id") == command_id:
            st.attempt = None
            self.disk.save(name, st)

    def _highest(self, offer: UpdateOffer, highest: int | None) -> int | None:
        """A runtime's highest version is also the promoted slot's (its attempts end in
        another runtime, which never writes this name's state.json)."""
        if offer.kind != "runtime" or self.installer is None:
            return highest
        promoted = self.installer.promoted_version(offer.name)
        return max(v for v in (highest, promoted, 0) if v is not None) or None

    def _handed_over(self, command_id: str | None) -> bool:
        return bool(command_id) and self.installer is not None and \
            self.installer.handed_over(str(command_id))

    async def _attempt(self, attempt: _Attempt) -> BundleStatus | None:
        offer = attempt.offer
        await asyncio.to_thread(self._mark_attempt, offer, attempt.command_id)
        status: BundleStatus | None
        try:
            status = await self._steps(offer, attempt.command_id)
        except _HandedOver:
            status = None
        except AttemptFailed as exc:
            status = await self._report(offer, exc.state, code=exc.code, reason=exc.reason,
                                        detail=exc.detail)
        except Exception as exc:  # a bug or the disk: the attempt fails, the node lives
            logger.exception("bundle attempt failed", extra={"bundle": offer.name})
            status = await self._report(offer, "failed", code="activation_failed",
                                        reason=f"internal: {type(exc).__name__}: {exc}")
        await asyncio.to_thread(self._clear_attempt, offer.name, attempt.command_id)
        return status

    async def _steps(self, offer: UpdateOffer, command_id: str) -> BundleStatus:
        part = self.disk.part_path(offer)
        async with self._downloads:
            await self._download(offer, part)
            st = await asyncio.to_thread(self.disk.load, offer.name)
            try:
                verified = await asyncio.to_thread(
                    verify_bundle, part, offer, state_dir=self.state_dir,
                    policy=self.policy, highest=self._highest(offer, st.highest),
                    now=self.now())
            except BundleError as exc:
                part.unlink(missing_ok=True)
                raise AttemptFailed("rejected", exc.code, exc.message) from None
            except OSError as exc:
                raise AttemptFailed("failed", "download_failed",
                                    f"the downloaded file cannot be read: {exc}") from None
        await self._report(offer, "verified", reason=f"signed by a trusted publisher; "
                           f"{verified.manifest.size} bytes of app checked")
        if offer.kind == "runtime":
            return await self._install_runtime(offer, verified, part, command_id)
        try:
            lock = self._locks.setdefault(offer.name, asyncio.Lock())
            async with lock:
                slot = await _whole(self._activate(offer, verified, part))
        finally:
            part.unlink(missing_ok=True)
        await self._report(offer, "activated", reason=f"started from {slot.dir}")
        return await self._probation(offer, verified.app, slot)

    async def _download(self, offer: UpdateOffer, part: Path) -> None:
        async def progress(have: int, resumed_from: int) -> None:
            await self._report(offer, "downloading", reason="resuming" if have else "",
                               detail={"bytes": have, "resumed_from": resumed_from})
        try:
            await download(self.source(), offer, part, progress=progress)
        except DownloadFailed as exc:
            state = "rejected" if exc.code in REJECT_CODES else "failed"
            raise AttemptFailed(state, exc.code, exc.reason) from None

    async def _install_runtime(self, offer: UpdateOffer, verified: Verified,
                               part: Path, command_id: str) -> BundleStatus:
        """Raises :class:`_HandedOver` once the supervisor has the request (the outcome,
        ``healthy`` or ``rolled_back`` ``update_failed``, comes from the runtime that reads
        its decision: node/selfupdate.py)."""
        try:
            if self.installer is None:
                raise AttemptFailed("rejected", "wrong_kind",
                                    "this node runs without a supervisor")
            try:
                await self.installer.install(offer, verified.manifest, part,
                                             command_id=command_id)
            except InstallFailed as exc:
                raise AttemptFailed("failed", exc.code, exc.message, exc.detail) from None
        finally:
            await asyncio.to_thread(part.unlink, missing_ok=True)
        await self._report(offer, "activated", reason="installed in the inactive slot; the "
                           "supervisor starts it as the candidate")
        raise _HandedOver

    async def _activate(self, offer: UpdateOffer, verified: Verified, part: Path) -> Slot:
        """Rule 1: unpack beside, switch, start. A failure before the switch leaves the
        old version running; the old app is stopped only once the new one is in place."""
        name = offer.name
        if name in self.apps.specs and name not in self._owned:
            raise AttemptFailed("failed", "activation_failed", f"apps.json declares an app "
                                f"named {name!r}; a bundle cannot replace it")
        try:
            slot = await asyncio.to_thread(self.disk.unpack, name, offer.version, part)
        except BundleError as exc:
            raise AttemptFailed("rejected", exc.code, exc.message) from None
        except OSError as exc:
            raise AttemptFailed("failed", "activation_failed", f"unpacking failed: {exc}"
                                ) from None
        await self.apps.remove(name)
        st = await asyncio.to_thread(self.disk.switch, name, slot)
        self._note(name, st, "activated", offer.version, "")
        await self._start_app(name, slot)
        await asyncio.to_thread(self.disk.prune, name)
        return slot

    # -- probation ------------------------------------------------------------------------

    def _on_exit(self, name: str, outcome: ExecOutcome) -> None:
        queue = self._exits.get(name)
        if queue is not None and queue.qsize() < 1000:
            queue.put_nowait(outcome)

    async def _probation(self, offer: UpdateOffer, app: BundleApp, slot: Slot
                         ) -> BundleStatus:
        name = offer.name
        queue: asyncio.Queue[ExecOutcome] = asyncio.Queue()
        self._exits[name] = queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + offer.probation_s
        # A restart within probation extends it until the new run has been up for
        # probation_s, by at most failure_threshold more probations.
        last_call = deadline + offer.probation_s * offer.failure_threshold
        health = app.health
        next_check = loop.time() + health.interval_s if health else None
        failed = 0
        exits: list[int | None] = []
        for _ in range(500):  # the supervisor's task has not run yet: let it spawn (<= 10 s)
            app_state = self.apps.states.get(name)
            if app_state is None or app_state.state != "stopped" or not queue.empty():
                break
            await asyncio.sleep(0.02)
        try:
            while True:
                if failed >= offer.failure_threshold:
                    await self._fail(offer, "start_failed", f"the app failed {failed} "
                                            f"starts within the probation of "
                                            f"{offer.probation_s:g} s", failed, exits)
                now = loop.time()
                if now >= deadline:
                    short = self._short_of_uptime(name, offer.probation_s)
                    if short <= 0 or now >= last_call:
                        break
                    deadline = min(last_call, now + short)  # it restarted within probation
                    continue
                wake = min(deadline, next_check) if next_check is not None else deadline
                try:
                    async with asyncio.timeout(max(0.0, wake - now)):
                        outcome = await queue.get()
                except TimeoutError:
                    pass
                else:
                    exits.append(outcome.exit_code)
                    if outcome.state != "succeeded":
                        failed += 1
                    continue
                if health is not None and next_check is not None \
                        and loop.time() >= next_check:
                    problem = await self._health_check(health, self.disk.version_dir(
                        name, slot))
                    if problem is not None:
                        await self._fail(offer, "health_failed", problem, failed,
                                                exits, check=list(health.argv[:8]))
                    next_check = loop.time() + health.interval_s
        finally:
            self._exits.pop(name, None)
        state = self.apps.states.get(name)
        if state is None or state.state != "running":
            await self._fail(offer, "start_failed", "the app is not running at the end "
                                    f"of its probation ({state.state if state else 'gone'})",
                                    failed, exits)
        if self._short_of_uptime(name, offer.probation_s) > 0:
            await self._fail(offer, "start_failed", "the app never stayed up for "
                                    f"{offer.probation_s:g} s without a restart", failed,
                                    exits)
        st = await asyncio.to_thread(self._confirm, name, slot)
        self._note(name, st, "healthy", offer.version, "")
        return await self._report(offer, "healthy", reason=f"up for {offer.probation_s:g} s")

    def _short_of_uptime(self, name: str, probation_s: float) -> float:
        """Seconds the app's current run still lacks to have been up for ``probation_s``;
        0 when it has, or when it is not running (the caller fails that case)."""
        state = self.apps.states.get(name)
        if state is None or state.state != "running":
            return 0.0
        return max(0.0, probation_s - (time.time() - state.since))

    def _confirm(self, name: str, slot: Slot) -> NameState:
        st = self.disk.load(name)
        if st.active is not None and st.active.dir == slot.dir:
            st.active.healthy = True
            self.disk.save(name, st)
        return st

    async def _health_check(self, health: HealthSpec, bundle_dir: Path) -> str | None:
        """None when the check exits 0 within its timeout; else what went wrong."""
        timeout = min(max(health.interval_s, 1.0), MAX_HEALTH_TIMEOUT_S)
        check = app_spec("health", bundle_dir, BundleApp(argv=health.argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *check.argv, cwd=check.cwd,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return f"the health check cannot start: {exc}"
        try:
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            return f"the health check did not answer within {timeout:g} s"
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
        return None if code == 0 else f"the health check exited {code}"

    async def _fail(self, offer: UpdateOffer, code: str, reason: str, failed: int,
                    exits: list[int | None], **extra: Any) -> NoReturn:
        """Roll back to the last known good, or without one stop the app (Rule 2: the
        highest activated version stays)."""
        name = offer.name
        tail = list(self.apps.tails.get(name, ()))[-DETAIL_LINES:]
        detail = {"failed_starts": failed, "exit_codes": exits[-DETAIL_EXITS:],
                  "log_tail": tail, **extra}
        async with self._locks.setdefault(name, asyncio.Lock()):
            lkg = await _whole(self._roll_back(name))
        if lkg is None:
            raise AttemptFailed("failed", code, f"{reason}; no last known good: stopped",
                                detail)
        raise AttemptFailed("rolled_back", code, f"{reason}; back on version {lkg.version}",
                            detail)

    async def _roll_back(self, name: str) -> Slot | None:
        """The last known good active again and started (None: there was none, the name
        has no active version now); the failed version's directory pruned."""
        await self.apps.remove(name)
        st = await asyncio.to_thread(self.disk.load, name)
        lkg = st.last_known_good
        if lkg is not None:
            st.active, st.last_known_good = lkg, None
        else:
            st.active = None
        await asyncio.to_thread(self.disk.save, name, st)
        await asyncio.to_thread(self.disk.prune, name)
        if lkg is not None:
            try:
                await self._start_app(name, lkg)
            except (BundleError, OSError) as exc:
                logger.error("the last known good cannot start", extra={
                    "bundle": name, "detail": str(exc)[:200]})
        return lkg


async def _whole(coro: Awaitable[T]) -> T:
    """Run a switch (activation or rollback) to its end even when the caller is cancelled
    (a newer offer, the runtime stopping): the caller's cancellation is raised after it, so
    the name is left on one whole version with its app started."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise

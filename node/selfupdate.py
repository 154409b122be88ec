"""The runtime's side of a self-update (docs/operations.md "Upgrading"): install a verified
runtime bundle into the inactive slot and hand it to the supervisor (node/supervisor.py);
after the replacement, report how it ended.

The bundle plane (node/bundles.py) calls :meth:`SelfUpdate.install` for a bundle of kind
``runtime`` once every check passed (node/bundles.py's ``RuntimeInstaller`` protocol). Then:

Rule 1 (deferral): while live media runs (a WebRTC peer ``connected``) and the offer is not
``force``, the install waits: ``bundle.status deferred`` with the reason, then a look every
``defer_poll_s`` until the media ends; past ``max_defer_s`` it fails (``update_failed``,
stage ``deferred``). Rule 2 (hand-over): the bundle is unpacked into the inactive slot
(node/slots.py), then ``update-request.json`` is written; the supervisor stops this runtime
(SIGHUP: detached as ``restarting``, the session stays with the sidecar) and starts the
candidate. ``install`` returns once the request is written. Rule 3 (the command lives on):
the ``update.now`` command named in the request stays ``running`` across the replacement
(:meth:`keep_running` keeps it out of the store's recovery, which fails what an earlier
runtime left running); whichever runtime reads the decided record first (the promoted
candidate, or the restored one) reports it once: ``bundle.status`` healthy (promoted) or
``rolled_back`` code ``update_failed`` with the recovery metadata as ``detail``, and
finishes the command (``succeeded`` with ``{name, version, state: healthy}``, or
``failed`` ``"rolled_back: update_failed: <reason>"``). ``update.reported`` holds the id
of the last update reported, so a restart never reports one twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from tether.protocol.bundle import Manifest
from tether.protocol.selfupdate import UpdateRecord, UpdateRequest
from tether.protocol.update import BundleStatus, UpdateOffer

from . import slots

logger = logging.getLogger(__name__)

MAX_DEFER_S = 3600.0
DEFER_POLL_S = 1.0
REPORT_POLL_S = 0.5


class InstallFailed(Exception):
    def __init__(self, code: str, message: str, detail: Mapping[str, Any] | None = None
                 ) -> None:
        super().__init__(message)
        self.code, self.message, self.detail = code, message, dict(detail or {})


def media_busy(rtc_status: Mapping[str, Any] | None) -> str | None:
    """Rule 1: why a runtime update must wait, from node/rtc's ``RtcManager.status()``: the
    peers ``connected`` now; None when no media runs."""
    if not rtc_status:
        return None
    peers = rtc_status.get("peers")
    if not isinstance(peers, list):
        return None
    live = [p for p in peers if isinstance(p, Mapping) and p.get("state") == "connected"]
    if not live:
        return None
    return f"live media: {len(live)} WebRTC peer(s) connected"


Report = Callable[[BundleStatus], Awaitable[None]]
Finish = Callable[[str, bool, str | None, dict[str, Any] | None], Awaitable[None]]


class SelfUpdate:
    """One per runtime. ``report`` queues a bundle.status (class A, the outbox);
    ``finish(command_id, ok, error, result)`` makes the update.now command terminal;
    ``media`` gives node/rtc's status (None: no media plane started)."""

    def __init__(self, *, state_dir: Path, supervised: bool, report: Report, finish: Finish,
                 media: Callable[[], Mapping[str, Any] | None],
                 max_defer_s: float = MAX_DEFER_S, defer_poll_s: float = DEFER_POLL_S,
                 wall: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.supervised = supervised
        self._report = report
        self._finish = finish
        self._media = media
        self.max_defer_s = max_defer_s
        self.defer_poll_s = defer_poll_s
        self._wall = wall

    def _ms(self) -> int:
        return int(self._wall() * 1000)

    def _status(self, offer: UpdateOffer, state: str, **kw: Any) -> BundleStatus:
        return BundleStatus(name=offer.name, version=offer.version, state=state,
                            at_ms=self._ms(), rollout_id=offer.rollout_id, kind="runtime", **kw)

    async def install(self, offer: UpdateOffer, manifest: Manifest, bundle_file: Path, *,
                      command_id: str | None = None) -> None:
        """Rules 1 and 2. Raises InstallFailed (nothing changed)."""
        if not self.supervised:
            raise InstallFailed("activation_failed", "this runtime runs without a "
                                "supervisor; run the node with 'tether node supervise'")
        reason = media_busy(self._media())
        if reason is not None and not offer.force:
            await self._report(self._status(offer, "deferred", reason=reason))
            deadline = time.monotonic() + self.max_defer_s
            while reason is not None:
                if time.monotonic() >= deadline:
                    raise InstallFailed("update_failed", f"deferred for {self.max_defer_s:g}"
                                        f" s and {reason}", {"stage": "deferred"})
                await asyncio.sleep(self.defer_poll_s)
                reason = media_busy(self._media())
        pointer = slots.read_pointer(self.state_dir)
        slot = slots.inactive_slot(pointer)
        try:
            version = await asyncio.to_thread(slots.install_into_slot, self.state_dir,
                                              bundle_file, manifest, slot)
        except slots.SlotError as exc:
            raise InstallFailed(exc.code, exc.message, {"stage": "install", "slot": slot}
                                ) from None
        request = UpdateRequest(update_id=secrets.token_hex(8), slot=slot, name=manifest.name,
                                bundle_version=manifest.version, requested_at_ms=self._ms(),
                                version=version, command_id=command_id,
                                rollout_id=offer.rollout_id, force=offer.force)
        await asyncio.to_thread(slots.write_request, self.state_dir, request)
        logger.info("runtime update handed to the supervisor", extra={
            "update_id": request.update_id, "slot": slot, "version": version})

    # -- after the replacement --------------------------------------------------------------

    def _reported(self) -> str | None:
        try:
            return slots.reported_path(self.state_dir).read_text().strip() or None
        except OSError:
            return None

    def keep_running(self) -> frozenset[str]:
        """Rule 3: the update.now command an update not reported yet must finish (pending
        request, undecided or unreported record); the store's recovery leaves it running."""
        ids: set[str] = set()
        request = slots.read_request(self.state_dir)
        if request is not None and request.command_id:
            ids.add(request.command_id)
        record = slots.read_record(self.state_dir)
        if record is not None and record.request.command_id and \
                record.request.update_id != self._reported():
            ids.add(record.request.command_id)
        return frozenset(ids)

    def promoted_version(self, name: str) -> int | None:
        """The bundle version the active slot holds when bundle ``name`` filled it."""
        pointer = slots.read_pointer(self.state_dir)
        return pointer.bundle_version if pointer.name == name else None

    def handed_over(self, command_id: str) -> bool:
        """Rule 3: the ``update.now`` command ``command_id`` belongs to the supervisor now
        (its request is written): the bundle plane must neither report its attempt
        ``interrupted`` when this runtime stops nor finish the command."""
        return command_id in self.keep_running()

    async def report_once(self) -> bool:
        """Rule 3: report the decided record if nobody has; True when it reported."""
        record = await asyncio.to_thread(slots.read_record, self.state_dir)
        if record is None or record.outcome is None or \
                record.request.update_id == self._reported():
            return False
        status, ok, error, result = self.outcome(record)
        await self._report(status)
        if record.request.command_id:
            await self._finish(record.request.command_id, ok, error, result)
        await asyncio.to_thread(slots.write_atomic, slots.reported_path(self.state_dir),
                                record.request.update_id.encode())
        logger.info("runtime update reported", extra={
            "update_id": record.request.update_id, "outcome": record.outcome})
        return True

    def outcome(self, record: UpdateRecord) -> tuple[BundleStatus, bool, str | None,
                                                     dict[str, Any] | None]:
        """The bundle.status and the command's end for a decided ``record``."""
        req = record.request
        common = {"name": req.name, "version": req.bundle_version, "at_ms": self._ms(),
                  "rollout_id": req.rollout_id, "kind": "runtime"}
        if record.outcome == "promoted":
            status = BundleStatus(state="healthy", active=req.bundle_version,
                                  last_known_good=record.previous.bundle_version,
                                  reason="promoted", detail={
                                      "slot": req.slot, "runtime_version": req.version,
                                      "backup_slot": record.previous.slot,
                                      "backup_path": slots.backup_path(
                                          self.state_dir, record.previous.slot)}, **common)
            return status, True, None, {"name": req.name, "version": req.bundle_version,
                                        "state": "healthy"}
        reason = f"stage {record.failed_stage}: {record.reason}"[:500]
        status = BundleStatus(state="rolled_back", code="update_failed", reason=reason,
                              active=record.previous.bundle_version,
                              last_known_good=record.previous.bundle_version,
                              detail=record.recovery(), **common)
        return status, False, f"rolled_back: update_failed: {reason}", None

    async def report_loop(self) -> None:
        """Rule 3, polled: the supervisor decides while this runtime runs (a promotion)."""
        while True:
            try:
                await self.report_once()
            except Exception as exc:  # the store or the disk: next time, never the runtime
                logger.warning("runtime update report failed", extra={"detail": str(exc)})
            await asyncio.sleep(REPORT_POLL_S)

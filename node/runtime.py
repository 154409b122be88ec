"""The node runtime: applies downlink commands, runs them, and keeps the uplink outbox.

Where a downlink frame enters: :meth:`NodeRuntime.on_frame`; where it is persisted and acked:
:meth:`_apply_loop`; where uplink frames leave: :meth:`_uplink_loop` (class C logs first, then
class A from the outbox, so a command's output always precedes its final status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

from tether.common import __version__, failpoints
from tether.common.loopback_http import serve_loopback
from tether.common.tasks import cancel_and_wait, live_tasks
from tether.protocol.classes import CMD_STREAM, EVT_STREAM
from tether.protocol.errors import BadFrame, RemoteProtocolError
from tether.protocol.frames import (
    CONTROL_KINDS,
    IO_BODIES,
    Ack,
    ErrorBody,
    Frame,
    IoAck,
    IoInput,
    IoResize,
    IoSignal,
    Welcome,
)
from tether.protocol.health import HEALTH_KIND
from tether.protocol.rtc import RTC_BODIES
from tether.protocol.streams import StreamReceiver, StreamRegressed, StreamSender, Verdict
from tether.protocol.update import (
    BUNDLE_STOP_KIND,
    UPDATE_KIND,
    BundleStatus,
    parse_bundle_stop,
    parse_update_offer,
)

from .apps import AppError, AppSupervisor, load_apps
from .bundlefetch import Source, source_url
from .bundles import BundleManager
from .config import NodeConfig
from .executors.exec import ExecOutcome, ExecRunner
from .executors.shell import ShellRunner
from .health import health_app
from .identity import Identity
from .iochannel import IoChannel
from .link import LinkStopped, ReconnectNeeded, SidecarLink, SidecarRefused
from .logbuf import LogBuffer
from .monitor import MonitorBuffer
from .policy import Policy
from .readiness import (
    Incidents,
    Signals,
    degraded_matrix,
    health_report,
    incident_class,
    readiness,
)
from .resources import sample as sample_resources
from .selfupdate import SelfUpdate
from .sidecar_proc import ensure_sidecar
from .store import NodeStore

logger = logging.getLogger(__name__)


def _activation_step(label: str) -> None:
    """The bundle plane's step hook (node/bundles.py ``BundleDisk``): ``placed`` is where
    the new version is moved in and ``state.json`` does not name it yet, the failpoint
    ``bundles.mid_activation``."""
    if failpoints.ARMED and label == "placed":
        failpoints.hit("bundles.mid_activation")

HEALTH_CHECK_S = 2.0  # how often the health report is judged for a change (class A when it did)
CAPABILITIES = ("exec", "diag.ping", "cancel", "pause", "resume", "apps", "shell", "io", "rtc",
                "file.send")
RTC_REPORT_MIN_S = 1.0  # node.rtc reports are coalesced: at most one a second


class NodeRuntime:
    def __init__(self, config: NodeConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        self.store = NodeStore(config.db_path, durability=config.durability)
        self.logs = LogBuffer(max_chunks=config.max_log_chunks)
        self.monitor = MonitorBuffer()
        self.link = SidecarLink(socket_path=config.socket_path, handler=self,
                                ensure_sidecar=self._ensure_sidecar)
        self.evt = StreamSender(window=config.evt_window)
        self.cmd = StreamReceiver()
        self.evt_epoch = 0
        self.session_id: str | None = None
        self.started = time.monotonic()
        self.accepting = True
        self.pending_cmd: list[Frame] = []
        self._cmd_wake = asyncio.Event()
        self._uplink_wake = asyncio.Event()
        self._acked_wake = asyncio.Event()
        self._evt_acked_on_disk = 0
        self.policy = Policy.load(config.effective_policy_path)
        self.apps = AppSupervisor(load_apps(config.apps_path), logs=self.logs,
                                  pids_path=config.state_dir / "apps.pids.json",
                                  on_output=self._uplink_wake.set,
                                  on_change=lambda table: self._apps_dirty.set())
        self._apps_dirty = asyncio.Event()
        self.bundles = BundleManager(
            state_dir=config.state_dir, apps=self.apps, policy=self.policy,
            emit=self._emit_bundle_status, source=lambda: Source(
                source_url(config.controller_url, identity.controller_url),
                identity.node_id, identity.key, identity.transport),
            step=_activation_step)
        self.max_concurrent = self.policy.max_concurrent or config.max_concurrent
        self._exec_slots = asyncio.Semaphore(self.max_concurrent)
        self.runners: dict[str, ExecRunner | ShellRunner] = {}
        self.io_dropped_total = 0  # io.* frames for no running command, or malformed
        self._tg: asyncio.TaskGroup | None = None
        self._status_dirty = asyncio.Event()
        self.final_close: tuple[int, str] | None = None
        self.refused: str | None = None
        self.restart_requested = False
        self._sidecar_spawned_at = -1e9
        self.incidents = Incidents()
        self.transport_view: dict[str, Any] = {}
        self._transport_seen = time.monotonic()
        self.heartbeat_s = 15.0
        self.stale_after_s = 60.0
        self._outbox_stats: dict[str, Any] = {"depth": 0, "oldest_age_s": 0.0}
        self.store_error: str | None = None
        # node/rtc's RtcManager, made on the first rtc.* frame (aiortc loads only then);
        # its task runs in the runtime's task group.
        self.rtc: Any = None
        self._rtc_tasks: list[asyncio.Task[None]] = []
        self._rtc_dirty = asyncio.Event()
        self.rtc_ignored_total = 0  # rtc.* frames other than the four signalling ones
        # node/rtc/relay.py's RelayManager (grants and the relay's file channels), made on
        # the first rtc.link / rtc.relay / file.send; its task runs in the task group.
        self.relay: Any = None
        # runtime self-update (node/selfupdate.py): the installer node/bundles.py calls for
        # a runtime bundle, and the report of an update decided while this runtime ran
        self.selfupdate = SelfUpdate(
            state_dir=config.state_dir, supervised=config.supervised,
            report=self._report_bundle, finish=self._finish_update,
            media=lambda: self.rtc.status() if self.rtc is not None else None)
        if config.supervised:  # else a runtime bundle is refused before anything runs
            self.bundles.installer = self.selfupdate

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set or the link ends for good; then drain, flush, say
        goodbye. The store is closed on the way out whatever happens."""
        self.store.rec_node = self.identity.node_id  # names the node in history records
        state = await self.store.open()
        try:
            self.evt_epoch = state.evt_epoch
            self.evt = StreamSender(last=state.evt_last, acked=state.evt_acked,
                                    window=self.config.evt_window)
            self._evt_acked_on_disk = state.evt_acked
            self.cmd = StreamReceiver(epoch=state.cmd_epoch, applied=state.cmd_applied)
            self.session_id = state.session_id
            to_run = await self.store.recover(keep=self.selfupdate.keep_running())
            self._outbox_grew(await self.store.append_event(
                "node.event", {"kind": "policy", "data": self.policy.summary()}))
            self.evt.outbox_holds((await self.store.stream_state()).evt_last)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                helpers = [tg.create_task(self._apply_loop(), name="node-apply"),
                           tg.create_task(self._uplink_loop(), name="node-uplink"),
                           tg.create_task(self._acked_loop(), name="node-acked"),
                           tg.create_task(self._status_loop(), name="node-status"),
                           tg.create_task(self._resources_loop(), name="node-resources"),
                           tg.create_task(self._apps_report_loop(), name="node-apps"),
                           tg.create_task(self._health_report_loop(), name="node-health"),
                           tg.create_task(self.selfupdate.report_loop(),
                                          name="node-selfupdate"),
                           tg.create_task(serve_loopback(
                               health_app(self), host=self.config.status_host,
                               port=self.config.status_port,
                               url_file=self.config.state_dir / "runtime.status.url"),
                               name="node-http")]
                for command in to_run:
                    self._spawn(command)
                reaped = self.apps.reap_previous()
                if reaped:
                    logger.info("stopped apps the previous runtime left running",
                                extra={"count": reaped})
                self.apps.start_all(tg)
                await self.bundles.restore()
                link_task = tg.create_task(self._run_link(), name="node-link")
                stopper = tg.create_task(stop.wait(), name="node-stop")
                await asyncio.wait({link_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                await self._shutdown(link_task)
                for task in helpers:
                    task.cancel()
        finally:
            self._write_status()
            await self.store.close()

    async def _run_link(self) -> None:
        try:
            await self.link.run()
        except LinkStopped as exc:
            self.final_close = (exc.code, exc.reason)
            logger.error("controller ended this node's session for good",
                         extra={"node_id": self.identity.node_id, "code": exc.code,
                                "reason": exc.reason})
        except SidecarRefused as exc:
            self.refused = exc.message
            logger.error("sidecar refused this runtime", extra={"detail": exc.message})

    async def _ensure_sidecar(self) -> None:
        """Start a sidecar when none runs; a sidecar just started gets 5 s to listen."""
        now = time.monotonic()
        if now - self._sidecar_spawned_at < 5.0:
            return
        if await asyncio.to_thread(ensure_sidecar, self.config):
            self._sidecar_spawned_at = now

    async def _shutdown(self, link_task: asyncio.Task[None]) -> None:
        self.accepting = False
        await self._stop_rtc()
        await self.bundles.stop()
        await self.apps.stop_all()  # a new runtime starts them again (never adopts)
        await self._report_apps()
        for runner in list(self.runners.values()):
            if isinstance(runner, ShellRunner):  # nothing to drain: an operator's terminal
                runner.cancel(ExecOutcome("failed", error="hung up: the node is stopping"))
        if self.runners:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.drain_timeout_s):
                    while self.runners:
                        await asyncio.sleep(0.05)
        for runner in list(self.runners.values()):
            runner.cancel(ExecOutcome("failed", error="interrupted: the node is stopping"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.kill_grace_s + 1):
                while self.runners:
                    await asyncio.sleep(0.05)
        if self.restart_requested:
            # The session stays with the sidecar; what is unacked stays in the outbox.
            await self.link.detach("restarting")
        elif self.final_close is None and self.refused is None:
            # Full stop: let the uplink deliver what is queued, then the sidecar says
            # goodbye and exits (the node shows offline at once).
            if self.link.connected.is_set():
                self._uplink_wake.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.flush_timeout_s):
                        while self.evt.unacked and self.link.connected.is_set():
                            await asyncio.sleep(0.02)
            await self.link.goodbye("node stopping")
        self.link.stop()
        await cancel_and_wait(link_task)

    async def _report_bundle(self, status: BundleStatus) -> None:
        """A ``bundle.status`` (class A) into the outbox."""
        self._outbox_grew(await self.store.append_event("bundle.status", status.body()))

    async def _finish_update(self, command_id: str, ok: bool, error: str | None,
                             result: dict[str, Any] | None) -> None:
        self._outbox_grew(await self.store.finish_command(
            command_id, "succeeded" if ok else "failed", error=error, result=result))

    def publish_monitor(self, topic: str, data: dict[str, Any]) -> int:
        """Queue a monitor packet (class C: bounded, oldest dropped and counted)."""
        seq = self.monitor.add(topic, data)
        self._uplink_wake.set()
        return seq

    async def emit_event(self, kind: str, data: dict[str, Any]) -> int:
        """Queue an application event (``node.event``, class A on ``evt``); returns its
        sequence number once it is persisted in the outbox."""
        q = await self.store.append_event("node.event", {"kind": kind, "data": data})
        self._outbox_grew(q)
        return q

    async def _emit_bundle_status(self, status: BundleStatus) -> None:
        """A ``bundle.status`` (class A on ``evt``), queued as ``node.event`` is."""
        self._outbox_grew(await self.store.append_event("bundle.status", status.body()))
        self._status_dirty.set()

    # -- LinkHandler ----------------------------------------------------------------------

    def attach_info(self) -> dict[str, Any]:
        return {"node_id": self.identity.node_id, "epoch": self.evt_epoch,
                "cmd_applied": self.cmd.applied, "session_id": self.session_id,
                "runtime": {"state": "attached", "version": __version__},
                "capabilities": [*CAPABILITIES, f"policy:{self.policy.summary()['digest']}"],
                "labels": self.identity.labels,
                "pid": os.getpid()}

    async def on_welcome(self, welcome: Welcome) -> None:
        self.session_id = welcome.session_id
        self.heartbeat_s, self.stale_after_s = welcome.heartbeat_s, welcome.stale_after_s
        reset = await self.store.set_session(welcome.session_id, welcome.epoch)
        if reset or self.cmd.epoch != welcome.epoch:
            self.cmd = StreamReceiver(epoch=welcome.epoch,
                                      applied=0 if reset else self.cmd.applied)
        peer = int(welcome.acks.get(EVT_STREAM, 0))
        try:
            self.evt.connected(peer)
        except StreamRegressed:
            state = await self.store.rotate_evt_epoch()
            self.evt_epoch = state.evt_epoch
            self.evt = StreamSender(last=state.evt_last, acked=0, window=self.config.evt_window)
            self._evt_acked_on_disk = 0
            raise ReconnectNeeded("controller's evt cursor did not fit: new epoch") from None
        self._note_evt_ack(peer)
        self._uplink_wake.set()
        self._status_dirty.set()

    async def on_frame(self, frame: Frame) -> None:
        t = frame.t
        if t == "cmd.deliver":
            if frame.s != CMD_STREAM or frame.q is None:
                await self.link.send(ErrorBody(code="bad_frame", message="cmd.deliver needs "
                                               "stream 'cmd' and a sequence").frame(re=frame.id))
                return
            verdict = self.cmd.classify(frame.q)
            if verdict is Verdict.APPLY:
                self.pending_cmd.append(frame)
                self._cmd_wake.set()
            else:
                await self.link.send(Ack(acks={CMD_STREAM: self.cmd.applied}).frame())
        elif t in ("edge.ack", "edge.heartbeat_ack"):
            acks = frame.b.get("acks") or {}
            n = acks.get(EVT_STREAM) if isinstance(acks, dict) else None
            if isinstance(n, int) and not isinstance(n, bool):
                self._note_evt_ack(n)
        elif t in IO_BODIES:
            await self._on_io(frame)
        elif t == "rtc.close" and await self._relay_closed(frame):
            pass
        elif t in RTC_BODIES:
            await self._on_rtc(frame)
        elif t == "rtc.link":
            (await self._ensure_relay()).on_link(frame)
        elif t == "rtc.relay":
            await (await self._ensure_relay()).receive(frame, on_first=self._relay_opened)
        elif t.startswith("rtc."):
            self.rtc_ignored_total += 1
        elif t == "error":
            logger.warning("controller reported an error", extra={
                "code": frame.b.get("code"), "detail": str(frame.b.get("message"))[:200]})
        else:
            await self.link.send(ErrorBody(code="unknown_type", message=f"frame type {t!r} is "
                                           "not handled by this node").frame(re=frame.id))

    async def _on_io(self, frame: Frame) -> None:
        """Class E io frames (docs/protocol.md "Interactive io"): parsed once, then to the
        running command they name. One for a command that is not running here (ended, not
        started yet, never had a stream) is dropped and counted: the sender's retransmit
        or its view of the command's end settles it."""
        try:
            body = IO_BODIES[frame.t].from_body(frame.b)
        except BadFrame as exc:
            self.io_dropped_total += 1
            await self.link.send(ErrorBody(code="bad_frame", message=exc.message)
                                 .frame(re=frame.id))
            return
        runner = self.runners.get(getattr(body, "command_id", ""))
        if runner is None:
            self.io_dropped_total += 1
            return
        if isinstance(body, IoSignal):
            runner.signal(body.signal)
        elif isinstance(body, IoResize):
            if isinstance(runner, ShellRunner):
                runner.resize(body.rows, body.cols)
        elif isinstance(body, IoInput | IoAck) and runner.io is not None:
            await runner.io.receive(body)
        else:
            self.io_dropped_total += 1

    async def _on_rtc(self, frame: Frame) -> None:
        """Class E ``rtc.*`` (docs/protocol.md "Media plane (node side)"): to the peer
        runtime, which parses it once and answers ``error`` for what it refuses."""
        if self.rtc is None and (self._tg is None or not self.accepting):
            await self.link.send(ErrorBody(code="unavailable", message="the node is "
                                           "stopping").frame(re=frame.id))
            return
        await (await self._ensure_rtc()).receive(frame)

    async def _ensure_relay(self) -> Any:
        """The RelayManager, started in the task group on first use (no aiortc needed)."""
        if self.relay is None:
            from .rtc.relay import RelayManager

            assert self._tg is not None
            self.relay = RelayManager(node_id=self.identity.node_id, send=self.link.send,
                                      workspace_dir=self.config.workspace_dir)
            self._rtc_tasks.append(self._tg.create_task(self.relay.run(), name="node-relay"))
        await self.relay.ready.wait()
        return self.relay

    async def _relay_opened(self, peer_session_id: str) -> None:
        """The relay took over a peer: this node's WebRTC peer of that id (which found no
        path) is closed without an rtc.close, which would end the grant."""
        peer = self.rtc.peers.get(peer_session_id) if self.rtc is not None else None
        if peer is not None:
            await self.rtc.finish(peer, "the relay took over (no direct path)",
                                  background=True)

    async def _relay_closed(self, frame: Frame) -> bool:
        """An rtc.close ending a relay here; True when nothing else is owed it (no WebRTC
        peer of that id is left to close)."""
        if self.relay is None:
            return False
        from tether.protocol.rtc import RtcClose

        try:
            body = RtcClose.from_body(frame.b)
        except BadFrame:
            return False
        if not self.relay.on_close(body):
            return False
        return self.rtc is None or body.peer_session_id not in self.rtc.peers

    async def _ensure_rtc(self) -> Any:
        """The RtcManager, made and started on first use (aiortc loads only then)."""
        if self.rtc is None:
            assert self._tg is not None
            from .rtc.control import CommandDispatcher
            from .rtc.ice import IceSettings, TurnServer, install_host_allowlist
            from .rtc.media import VideoSource
            from .rtc.peers import RtcManager

            cfg = self.config
            install_host_allowlist(cfg.rtc_host_addresses)
            ice = IceSettings(host_addresses=cfg.rtc_host_addresses, stun_urls=cfg.rtc_stun,
                              turn=tuple(TurnServer(url, cfg.rtc_turn_username,
                                                    cfg.rtc_turn_credential)
                                         for url in cfg.rtc_turn))
            self.rtc = RtcManager(
                node_id=self.identity.node_id, send=self.link.send,
                dispatcher=CommandDispatcher(policy=self.policy, exec_slots=self._exec_slots,
                                             kill_grace_s=cfg.kill_grace_s,
                                             status=self._control_status,
                                             apps_table=self.apps.table),
                ice=ice, video=VideoSource(cfg.rtc_video), workspace_dir=cfg.workspace_dir,
                max_peers=cfg.max_rtc_peers, on_change=self._rtc_dirty.set)
            self._rtc_tasks += [self._tg.create_task(self.rtc.run(), name="node-rtc"),
                                self._tg.create_task(self._rtc_report_loop(),
                                                     name="node-rtc-report")]
        await self.rtc.ready.wait()
        return self.rtc

    async def _stop_rtc(self) -> None:
        """Every peer closed (the other ends told), then the rtc tasks cancelled and
        awaited: aiortc's own tasks end with their connections."""
        if self.rtc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.drain_timeout_s):
                    await self.rtc.close()
        for task in self._rtc_tasks:
            task.cancel()
        await asyncio.gather(*self._rtc_tasks, return_exceptions=True)

    async def _rtc_report_loop(self) -> None:
        """The peers' status to the controller as class B ``node.rtc`` (latest wins,
        coalesced to one a second; refreshed each heartbeat while a peer is open). A node
        that never had a peer never sends one."""
        while True:
            changed = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s):
                    changed = await self._rtc_dirty.wait()
            self._rtc_dirty.clear()
            if self.rtc is not None and (self.rtc.peers or changed):
                await self.link.send(Frame(t="node.rtc", b=self.rtc.report()))
            self._status_dirty.set()
            await asyncio.sleep(RTC_REPORT_MIN_S)

    def _control_status(self) -> dict[str, Any]:
        """What ``status`` answers on a peer's control channel."""
        tree = self.readiness()
        return {"node_id": self.identity.node_id, "version": __version__,
                "ready": tree["ready"], "reasons": tree["reasons"],
                "running": len(self.runners),
                "rtc": self.rtc.status() if self.rtc is not None else {"peers": []}}

    async def on_disconnected(self) -> None:
        self.evt.disconnected()
        code = self.transport_view.get("last_close_code")
        reason = self.transport_view.get("last_close_reason") or "connection lost"
        self.incidents.record(time.time(), incident_class(code),
                              f"controller session ended: {reason}", close_code=code)
        self._status_dirty.set()

    def on_transport_status(self, status: dict[str, Any]) -> None:
        self.transport_view = status
        self._transport_seen = time.monotonic()

    def on_sidecar_lost(self) -> None:
        self.transport_view = {}
        self.incidents.record(time.time(), "transport", "sidecar went away")
        self._status_dirty.set()

    def _note_evt_ack(self, n: int) -> None:
        try:
            if self.evt.on_ack(n) is not None:
                self._uplink_wake.set()
                self._acked_wake.set()
        except RemoteProtocolError as exc:
            logger.warning("ignoring an ack beyond what was sent", extra={"detail": exc.message})

    # -- downlink -------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        while True:
            await self._cmd_wake.wait()
            self._cmd_wake.clear()
            if not self.pending_cmd:
                continue
            batch, self.pending_cmd = self.pending_cmd, []
            try:
                applied = await self.store.apply_downlink(batch, self._check_command)
            except BaseException:
                self.cmd.rollback()
                raise
            self.cmd.committed(batch[-1].q or 0)
            await self.link.send(Ack(acks={CMD_STREAM: self.cmd.applied}).frame())
            self._outbox_grew(applied.outbox_last)
            for command in applied.to_run:
                self._spawn(command)
            for control_id, kind, args in applied.to_control:
                self._spawn({"command_id": control_id, "kind": kind, "args": args})

    def _check_command(self, kind: str, args: Any) -> str | None:
        """The node's policy, and for ``file.send`` its source rule (policy rule 6)."""
        from .filesend import check_file_send

        return self.policy.check(kind, args) or check_file_send(
            self.policy, self.config.workspace_dir, kind, dict(args))

    def _outbox_grew(self, last: int | None) -> None:
        if last is not None and last > self.evt.last:
            self.evt.outbox_holds(last)
        self._uplink_wake.set()

    def _spawn(self, command: dict[str, Any]) -> None:
        assert self._tg is not None
        self._tg.create_task(self._execute(command), name=f"cmd:{command['command_id']}")

    async def _execute(self, command: dict[str, Any]) -> None:
        command_id, kind = command["command_id"], command["kind"]
        if kind in CONTROL_KINDS:
            await self._control(command_id, kind, command["args"])
            return
        if kind.startswith("app."):
            await self._app_command(command_id, kind, command["args"])
            return
        if kind == "file.send":
            await self._file_send(command_id, command["args"])
            return
        if kind == UPDATE_KIND:
            await self._update(command_id, command["args"])
            return
        if kind == BUNDLE_STOP_KIND:
            await self._bundle_stop(command_id, command["args"])
            return
        async with self._exec_slots:
            if not self.accepting:
                return  # stays 'delivered'; runs after the next start
            started = await self.store.start_command(command_id)
            if started is None:
                return  # cancelled before it started
            self._outbox_grew(started)
            args = command["args"]
            runner: ExecRunner | ShellRunner
            if kind == "shell":
                runner = ShellRunner(command_id, args, io=IoChannel(command_id, self.link.send,
                                                                   lease_s=self.config.io_lease_s),
                                     policy=self.policy, kill_grace_s=self.config.kill_grace_s)
            else:
                runner = ExecRunner(command_id, args, logs=self.logs,
                                    on_output=self._uplink_wake.set,
                                    kill_grace_s=self.config.kill_grace_s,
                                    policy=self.policy,
                                    max_output_bytes=self.policy.max_output_bytes,
                                    io=IoChannel(command_id, self.link.send,
                                                 lease_s=self.config.io_lease_s)
                                    if args.get("stdin") is True else None)
            self.runners[command_id] = runner
            try:
                outcome = await runner.run()
            finally:
                self.runners.pop(command_id, None)
            self.logs.forget(command_id)
            self._outbox_grew(await self.store.finish_command(
                command_id, outcome.state, exit_code=outcome.exit_code, error=outcome.error,
                result=dict(outcome.result) if outcome.result else None))

    async def _begin(self, command_id: str) -> bool:
        """Commit ``running`` before a command starts (at most once: after a crash it is
        reported interrupted, never started again). False when it must not start now: the
        runtime is stopping (it stays 'delivered' and runs after the next start) or it
        already ran."""
        if not self.accepting:
            return False
        started = await self.store.start_command(command_id)
        if started is None:
            return False
        self._outbox_grew(started)
        return True

    async def _file_send(self, command_id: str, args: dict[str, Any]) -> None:
        """``file.send`` (node/filesend.py): direct, else through the relay."""
        from .filesend import FileSendFailed, run_file_send

        if not await self._begin(command_id):
            return
        try:
            result = await run_file_send(
                args=args, policy=self.policy, workspace=self.config.workspace_dir,
                rtc=self._ensure_rtc, relay=await self._ensure_relay(),
                ice_timeout_s=self.config.rtc_ice_timeout_s)
        except FileSendFailed as exc:
            self._outbox_grew(await self.store.finish_command(
                command_id, "failed", error=f"{exc.code}: {exc.message}"))
            return
        except Exception as exc:  # aiortc, disk: the command fails, the node lives
            logger.exception("file.send failed", extra={"command_id": command_id})
            self._outbox_grew(await self.store.finish_command(
                command_id, "failed", error=f"internal: {type(exc).__name__}: {exc}"))
            return
        self._outbox_grew(await self.store.finish_command(command_id, "succeeded",
                                                          exit_code=0, result=result))

    async def _update(self, command_id: str, args: dict[str, Any]) -> None:
        """``update.now`` (node/bundles.py): succeeded once the version is healthy, else
        failed with ``<state>: <code>: <reason>``."""
        if not await self._begin(command_id):
            return
        try:
            end = await self.bundles.run(command_id, parse_update_offer(args))
        except Exception as exc:  # a bug or the disk: the command fails, the node lives
            logger.exception("update.now failed", extra={"command_id": command_id})
            self._outbox_grew(await self.store.finish_command(
                command_id, "failed", error=f"internal: {type(exc).__name__}: {exc}"))
            return
        if end is None:  # a runtime bundle: the supervisor has it (node/selfupdate.py)
            return
        ok = end.state == "healthy"
        self._outbox_grew(await self.store.finish_command(
            command_id, "succeeded" if ok else "failed",
            error=None if ok else f"{end.state}: {end.code}: {end.reason}",
            result={"name": end.name, "version": end.version, "state": end.state}
            if ok else None))

    async def _bundle_stop(self, command_id: str, args: dict[str, Any]) -> None:
        """``bundle.stop`` (node/bundles.py Rule 5): succeeded with ``{name, version,
        state: "stopped", was_running}``, else failed saying why (nothing changed). Its
        args were checked when applied (node/store.py)."""
        from .bundles import StopRefused

        if not await self._begin(command_id):
            return
        try:
            result = await self.bundles.stop_app(parse_bundle_stop(args))
        except StopRefused as exc:
            self._outbox_grew(await self.store.finish_command(command_id, "failed",
                                                              error=str(exc)))
            return
        except Exception as exc:  # a bug or the disk: the command fails, the node lives
            logger.exception("bundle.stop failed", extra={"command_id": command_id})
            self._outbox_grew(await self.store.finish_command(
                command_id, "failed", error=f"internal: {type(exc).__name__}: {exc}"))
            return
        self._outbox_grew(await self.store.finish_command(command_id, "succeeded",
                                                          result=result))

    async def _app_command(self, command_id: str, kind: str, args: dict[str, Any]) -> None:
        started = await self.store.start_command(command_id)
        if started is None:
            return
        self._outbox_grew(started)
        name = args.get("name")
        try:
            if kind == "app.status":
                table = self.apps.table()
                if isinstance(name, str):
                    self.apps.check(name)
                    table = {name: table[name]}
                result: dict[str, Any] = {"apps": table}
            elif not isinstance(name, str):
                raise AppError(f"{kind} needs 'name'")
            elif kind == "app.start":
                result = {"started": self.apps.start(name)}
            elif kind == "app.stop":
                result = {"stopped": await self.apps.stop(name)}
            else:
                await self.apps.restart(name)
                result = {"restarted": True}
        except AppError as exc:
            self._outbox_grew(await self.store.finish_command(command_id, "failed",
                                                              error=exc.message))
            return
        self._outbox_grew(await self.store.finish_command(command_id, "succeeded",
                                                          result=result))

    async def _apps_report_loop(self) -> None:
        """App state changes reach the controller as class A ``node.event`` kind ``apps``
        (coalesced: each report carries the whole table, restart counters included)."""
        while True:
            await self._apps_dirty.wait()
            await self._report_apps()

    async def _report_apps(self) -> None:
        if not self._apps_dirty.is_set():
            return
        self._apps_dirty.clear()
        self._outbox_grew(await self.store.append_event(
            "node.event", {"kind": "apps", "data": self.apps.table()}))

    async def _health_report_loop(self) -> None:
        """The readiness tree and the newest incidents reach the controller as a class A
        ``node.event`` kind ``health`` (readiness.py ``health_report``) when they changed,
        judged every ``HEALTH_CHECK_S`` while a session is up: what happened offline goes
        in the first report after it, and nothing piles up in the outbox meanwhile."""
        last: dict[str, Any] | None = None
        while True:
            await self.link.connected.wait()
            report = health_report(self.readiness(), self.incidents, time.time())
            state = {k: v for k, v in report.items() if k != "at_ms"}
            if state != last:
                try:
                    await self.emit_event(HEALTH_KIND, report)
                    last = state
                except Exception as exc:  # the store: already a readiness fact; next time
                    logger.warning("health report not queued", extra={"detail": str(exc)})
            await asyncio.sleep(HEALTH_CHECK_S)

    async def _control(self, control_id: str, kind: str, args: dict[str, Any]) -> None:
        """cancel / pause / resume ``args.command_id``; the control command itself succeeds
        or fails with the reason."""
        target = str(args.get("command_id"))
        runner = self.runners.get(target)
        current = await self.store.command_state(target)
        error: str | None = None
        if current is None:
            error = f"unknown command {target}"
        elif kind == "cancel":
            if runner is not None:
                runner.cancel()
            elif current == "delivered":
                await self.store.finish_command(target, "cancelled",
                                                error="cancelled before it started")
            else:
                error = f"command {target} is already {current}"
        elif kind == "pause":
            if runner is None or current != "running" or not runner.pause():
                error = f"command {target} is {current}, not running"
            else:
                self._outbox_grew(await self.store.set_paused(target, True))
        else:  # resume
            if runner is None or current != "paused" or not runner.resume():
                error = f"command {target} is {current}, not paused"
            else:
                self._outbox_grew(await self.store.set_paused(target, False))
        state = "failed" if error else "succeeded"
        self._outbox_grew(await self.store.finish_command(control_id, state, error=error))

    # -- uplink ---------------------------------------------------------------------------

    async def _uplink_loop(self) -> None:
        while True:
            await self._uplink_wake.wait()
            self._uplink_wake.clear()
            if not self.link.connected.is_set():
                continue
            # Rule: a command's output goes before its status. Its chunks are buffered
            # before its status enters the outbox, so only outbox frames already there when
            # the chunks were taken may follow them; later ones wait for the next pass
            # (which takes the output buffered meanwhile first).
            outbox_last = self.evt.last
            chunks = [chunk.frame() for chunk in self.logs.take()]
            if chunks:
                if not await self.link.send_many(chunks):
                    self.logs.requeue()  # kept for the next session, in order
                    continue
                self.logs.sent()  # room comes back to the pipe readers waiting on it
                del chunks
            packets = [packet.frame() for packet in self.monitor.take()]
            if packets and not await self.link.send_many(packets):
                continue
            todo = self.evt.next_to_send()
            if todo.stop > outbox_last + 1:
                todo = range(todo.start, outbox_last + 1)
                self._uplink_wake.set()
            if not todo:
                continue
            # Frames committed a moment ago go from memory, encoded at append; from the
            # first one memory lacks (after a restart, a new epoch, past its bounds), the
            # rest are read from the outbox on the next pass (node/outbox_tail.py).
            encoded = self.store.encoded_run(todo.start, todo.stop - 1)
            if not encoded:
                after = self.evt.sent
                encoded = await self.store.outbox_encoded_after(after, len(todo))
                if self.evt.sent != after:  # a reconnect moved the cursor meanwhile: what
                    self._uplink_wake.set()  # was read would leave a gap; read again
                    continue
                if not encoded:
                    continue
            if len(encoded) < len(todo):  # the rest on the next pass
                self._uplink_wake.set()
            before = self.evt.sent
            self.evt.mark_sent(before + len(encoded))  # first: the ack may come back first
            if not await self.link.send_encoded(encoded):  # the link is gone: send again
                self.evt.rewind_to(before)  # (unless a reconnect rewound it further)
            elif failpoints.ARMED:  # handed to the sidecar; no ack seen yet
                failpoints.hit("outbox.after_send")

    async def _acked_loop(self) -> None:
        """Records the controller's ``evt`` cursor and drops acked outbox rows, off the
        uplink path: sending never waits on this write. A cursor not yet recorded when the
        node crashes only means frames the controller re-acks as duplicates."""
        while True:
            await self._acked_wake.wait()
            self._acked_wake.clear()
            acked, epoch = self.evt.acked, self.evt_epoch
            if acked > self._evt_acked_on_disk:
                if await self.store.ack_evt(acked, epoch=epoch) and epoch == self.evt_epoch:
                    self._evt_acked_on_disk = max(self._evt_acked_on_disk, acked)

    async def _resources_loop(self) -> None:
        """One ``node.resources`` per heartbeat period while a session is up (class B: not
        persisted, not replayed; a sample that cannot be sent is simply superseded)."""
        while True:
            await self.link.connected.wait()
            try:
                body = await asyncio.to_thread(sample_resources, self.config.state_dir)
            except (OSError, RuntimeError) as exc:
                logger.warning("resource sample failed", extra={"detail": str(exc)})
            else:
                await self.link.send(Frame(t="node.resources", b=body))
            await asyncio.sleep(self.heartbeat_s)

    # -- status file ------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        """Keeps status.json fresh and tells the sidecar the outbox depth (for heartbeats)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._status_dirty.wait()
            self._status_dirty.clear()
            try:
                self._outbox_stats = await self.store.outbox_stats()
                self.store_error = None
            except Exception as exc:  # a store that cannot answer is a readiness fact
                if self.store_error is None:
                    self.incidents.record(time.time(), "store", f"store read failed: {exc}")
                self.store_error = str(exc)
            self._write_status()
            await self.link.send_local(Frame(t="local.state", b={"outbox": {
                "depth": self.evt.unacked, "last": self.evt.last, "acked": self.evt.acked}}))

    def readiness(self) -> dict[str, Any]:
        view = self.transport_view
        ack_age = view.get("last_ack_age_s")
        if isinstance(ack_age, int | float):  # it aged since the sidecar measured it
            ack_age += time.monotonic() - self._transport_seen
        return readiness(Signals(
            now=time.time(), sidecar_attached=self.link.attached.is_set(),
            session_connected=self.link.connected.is_set(),
            last_ack_age_s=ack_age if self.link.attached.is_set() else None,
            heartbeat_s=self.heartbeat_s, stale_after_s=self.stale_after_s,
            outbox_depth=self.evt.unacked,
            outbox_oldest_age_s=float(self._outbox_stats.get("oldest_age_s") or 0.0),
            max_outbox=self.config.max_outbox, store_ok=self.store_error is None,
            store_error=self.store_error, running=len(self.runners),
            max_concurrent=self.max_concurrent), self.incidents)

    def status(self) -> dict[str, Any]:
        tree = self.readiness()
        return {
            "node_id": self.identity.node_id,
            "pid": os.getpid(),
            "version": __version__,
            "updated_at": time.time(),
            "readiness": tree,
            "matrix": degraded_matrix(tree),
            "incidents": list(self.incidents.items)[-20:],
            "sidecar": self.link.status.as_dict(),
            "transport": self.transport_view,
            "outbox": {"depth": self.evt.unacked, "last": self.evt.last,
                       "acked": self.evt.acked},
            "cmd": {"epoch": self.cmd.epoch, "applied": self.cmd.applied},
            "running": sorted(self.runners),
            "apps": self.apps.table(),
            "bundles": self.bundles.status(),
            "logs": {"buffered": len(self.logs), "dropped_total": self.logs.dropped_total,
                     "waiting_bytes": self.logs.waiting_bytes},
            "monitor": {"buffered": len(self.monitor),
                        "dropped_total": self.monitor.dropped_total},
            "rtc": self.rtc.status() if self.rtc is not None else {"peers": []},
            "relay": self.relay.status() if self.relay is not None else None,
            "event_loop": {"tasks": live_tasks()},  # a task leak grows it (the soak judges it)
        }

    def _write_status(self) -> None:
        path = self.config.status_path
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(self.status(), indent=2))
            tmp.replace(path)

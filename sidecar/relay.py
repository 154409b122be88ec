"""The sidecar's relay: one controller session (:class:`ControllerLink`) and at most one
attached runtime (over the Unix socket), with frames relayed both ways.

Rule 1: the sidecar holds no durable message state. Class A frames live in the runtime's
outbox; while no runtime is attached the sidecar tells the controller (``edge.runtime``),
which stops sending downlink frames until ``edge.resume`` names the runtime's cursor again.
Rule 2: only one runtime is attached at a time; a second one gets ``local.refused``.
Rule 3: the hello the sidecar sends is built from what the runtime last said at attach
(epoch, cursor, session id), updated by the acks the runtime sends through it.
Rule 5: a connection whose first frame is ``local.update`` is the supervisor's, not a
runtime's: its update stage goes into the heartbeats (``update``) until replaced, ended, or
``deadline_s`` (+ :data:`UPDATE_GRACE_S`) passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from tether.common import __version__
from tether.common.identity import Identity
from tether.common.loopback_http import serve_loopback
from tether.common.tasks import live_tasks
from tether.protocol.classes import CMD_STREAM, EVT_STREAM
from tether.protocol.errors import BadFrame, TetherError
from tether.protocol.frames import Frame, Heartbeat, Resume, RuntimeState, Welcome
from tether.protocol.local import (
    LOCAL_BODY_TYPES,
    LocalAttach,
    LocalDecoder,
    LocalDetach,
    LocalGoodbye,
    LocalReconnect,
    LocalState,
    LocalUpdate,
    encode_local,
    peek_type,
)
from tether.protocol.selfupdate import UpdateInfo

from .config import SidecarConfig
from .status import status_app
from .transport import ControllerLink, HelloState, LinkStatus, LinkStopped, TlsOptions

logger = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
UPDATE_GRACE_S = 5.0  # a reported update stage outlives its deadline by this, no more


class RuntimeConn:
    """One attached runtime: the socket's writer, serialised by a lock."""

    def __init__(self, writer: asyncio.StreamWriter, pid: int | None,
                 decoder: LocalDecoder) -> None:
        self.writer = writer
        self.pid = pid
        self.decoder = decoder
        self._lock = asyncio.Lock()

    async def send(self, frame: Frame) -> bool:
        try:
            async with self._lock, asyncio.timeout(10):
                self.writer.write(encode_local(frame))
                await self.writer.drain()
        except (OSError, TimeoutError, RuntimeError):
            return False
        return True


class Sidecar:
    def __init__(self, config: SidecarConfig, identity: Identity, *,
                 on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.identity = identity
        tr = identity.transport
        self.link = ControllerLink(
            controller_url=config.controller_url or identity.controller_url,
            fallback_urls=tuple(tr.get("fallback_urls") or ()),
            tls=TlsOptions(ca_file=config.ca_file or tr.get("ca_file"),
                           pins=frozenset(p.lower().replace(":", "") for p in
                                          (config.pins or tr.get("pins") or ()))),
            proxy=config.proxy or tr.get("proxy") or True,
            node_id=identity.node_id, key=identity.key, handler=self,
            on_status=self._link_status_changed)
        self.started = time.monotonic()
        self.runtime: RuntimeConn | None = None
        self.runtime_state = "detached"
        self.runtime_version: str | None = None
        self.hello: dict[str, Any] | None = None
        self.first_attach = asyncio.Event()
        self.cmd_applied = 0
        self.evt_acked = 0
        self.session_id: str | None = None
        self.welcome: Welcome | None = None
        self.outbox: dict[str, Any] = {}
        self.stop = asyncio.Event()
        self.goodbye_reason: str | None = None
        self.final_close: tuple[int, str] | None = None
        # The stream server's task of each runtime connection -> the task serving it.
        self._clients: dict[asyncio.Task[Any], asyncio.Future[None]] = {}
        self._on_status = on_status
        self._status_wake = asyncio.Event()
        self._forward_status = False
        # A runtime self-update the supervisor reported (local.update): its stage, since
        # when (monotonic) and until when it may be shown (Rule 5).
        self.update = UpdateInfo()
        self._update_since = 0.0
        self._update_until = 0.0

    # -- lifetime -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket and the controller session until :attr:`stop` is set (SIGTERM,
        a runtime's ``local.goodbye``) or the controller ends the node for good."""
        path = self.config.socket_path
        path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            server = await asyncio.start_unix_server(self._client, path=str(path))
        finally:
            os.umask(old_umask)
        try:
            async with asyncio.TaskGroup() as tg:
                helpers = [tg.create_task(self._status_forwarder(), name="sidecar-status"),
                           tg.create_task(serve_loopback(
                               status_app(self), host=self.config.status_host,
                               port=self.config.status_port,
                               url_file=self.config.state_dir / "sidecar.status.url"),
                               name="sidecar-http")]
                link_task = tg.create_task(self._run_link(), name="sidecar-link")
                stopper = tg.create_task(self.stop.wait(), name="sidecar-stop")
                await asyncio.wait({link_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if self.link.connected.is_set():
                    await self.link.goodbye(self.goodbye_reason or "sidecar stopping")
                self.link.stop()
                link_task.cancel()
                for task in helpers:
                    task.cancel()
        finally:
            server.close()
            for inner in list(self._clients.values()):
                inner.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()
            path.unlink(missing_ok=True)
            self._publish()

    async def _run_link(self) -> None:
        await self.first_attach.wait()  # the hello needs the runtime's epoch and cursor
        try:
            await self.link.run()
        except LinkStopped as exc:
            self.final_close = (exc.code, exc.reason)
            logger.error("controller ended this node's session for good",
                         extra={"node_id": self.identity.node_id, "code": exc.code,
                                "reason": exc.reason})
            if self.runtime is not None:
                await self.runtime.send(Frame(t="local.stopped",
                                              b={"code": exc.code, "reason": exc.reason}))

    # -- the runtime side -----------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The unix server's callback. Its task belongs to asyncio's stream machinery, which
        on Python 3.11 calls ``task.exception()`` when it ends and so logs a cancelled one as
        an ERROR traceback. So the connection is served by an inner task that this relay
        owns: shutdown cancels that one (:attr:`_clients`), and this one returns normally.
        An unexpected exception of the inner task is re-raised here, logged once."""
        outer = asyncio.current_task()
        assert outer is not None
        inner = asyncio.ensure_future(self._serve_client(reader, writer))
        self._clients[outer] = inner
        try:
            await asyncio.wait({inner})
        finally:
            inner.cancel()  # a no-op once it is done; if this task is cancelled, it goes too
            del self._clients[outer]
        if not inner.cancelled():
            inner.result()

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        conn: RuntimeConn | None = None
        try:
            conn = await self._attach(reader, writer)
            if conn is not None:
                await self._serve_runtime(conn, reader)
        except (OSError, TetherError, TimeoutError) as exc:
            logger.warning("runtime connection failed", extra={"detail": str(exc)})
        finally:
            if conn is not None and self.runtime is conn:
                await self._runtime_gone()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _attach(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> RuntimeConn | None:
        decoder = LocalDecoder()
        frames: list[Frame] = []
        async with asyncio.timeout(self.config.attach_timeout_s):
            while not frames:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return None
                frames = decoder.feed(data)
        first = frames[0]
        if first.t == LocalUpdate.TYPE:  # the supervisor, not a runtime (Rule 5)
            await self._on_update(first)
            # after the heartbeat went: the supervisor signals the runtime only then
            writer.write(encode_local(Frame(t="local.updated", b={})))
            await writer.drain()
            return None
        conn = RuntimeConn(writer, first.b.get("pid"), decoder)
        if first.t != "local.attach":
            await conn.send(Frame(t="local.refused", b={"reason": "send local.attach first"}))
            return None
        if self.runtime is not None:
            await conn.send(Frame(t="local.refused", b={
                "reason": f"another runtime (pid {self.runtime.pid}) is attached"}))
            return None
        try:  # the runtime's values go into hellos: the edge's value rules, checked here
            attach = LocalAttach.parse(first)
        except BadFrame as exc:
            await conn.send(Frame(t="local.refused", b={"reason": exc.message}))
            return None
        if attach.node_id != self.identity.node_id:
            await conn.send(Frame(t="local.refused", b={
                "reason": f"this sidecar serves node {self.identity.node_id}"}))
            return None
        self.runtime = conn
        self.hello = attach.to_body()
        self.cmd_applied = attach.cmd_applied
        self.session_id = self.session_id or attach.session_id
        self.runtime_state = "attached"
        self.runtime_version = attach.runtime.version
        await conn.send(Frame(t="local.attached", b={"sidecar": {
            "pid": os.getpid(), "version": __version__}}))
        await conn.send(Frame(t="local.status", b=self.transport_view()))
        logger.info("runtime attached", extra={"pid": conn.pid})
        if self.link.connected.is_set() and self.welcome is not None:
            await conn.send(self._session_frame())
            await self.link.send(RuntimeState(state="attached",
                                              version=self.runtime_version).frame())
            await self.link.send(Resume(acks={CMD_STREAM: self.cmd_applied}).frame())
        self.first_attach.set()
        self._publish()
        for frame in frames[1:]:
            await self._from_runtime(frame)
        return conn

    async def _serve_runtime(self, conn: RuntimeConn, reader: asyncio.StreamReader) -> None:
        """Edge frames are relayed as the bytes the runtime encoded, everything one read
        brought in one :meth:`ControllerLink.send_raw` (order kept across local frames).

        Rule 4: the sidecar decodes only the frames it acts on (``local.*``, and
        ``edge.ack`` for its cmd cursor); any other edge frame is relayed as it came,
        undecoded (its type is read from its first bytes): the controller parses it at its
        own boundary, as it would a frame straight from the runtime."""
        decoder = conn.decoder
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            relay: list[bytes] = []
            for raw in decoder.feed_payloads(data):
                t = peek_type(raw)
                if t is not None and not t.startswith("local.") and t != "edge.ack":
                    relay.append(raw)
                    continue
                frame = decoder.decode(raw)
                if not frame.t.startswith("local."):
                    self._note_uplink(frame)
                    relay.append(raw)
                    continue
                if relay:
                    await self.link.send_raw(relay)
                    relay = []
                await self._from_runtime(frame)
            if relay:
                await self.link.send_raw(relay)

    def _note_uplink(self, frame: Frame) -> None:
        if frame.t == "edge.ack":
            acks = frame.b.get("acks") or {}
            n = acks.get(CMD_STREAM) if isinstance(acks, dict) else None
            if isinstance(n, int) and n > self.cmd_applied:
                self.cmd_applied = n

    async def _from_runtime(self, frame: Frame) -> None:
        t = frame.t
        if t not in LOCAL_BODY_TYPES:
            self._note_uplink(frame)
            await self.link.send(frame)  # dropped while there is no session: the runtime
            # re-sends class A frames from the controller's cursor on the next session
            return
        try:  # parsed once, here: what goes into hellos and heartbeats is checked
            body = LOCAL_BODY_TYPES[t].parse(frame)
        except BadFrame as exc:
            logger.warning("runtime sent a bad local frame; ignored",
                           extra={"frame_type": t, "detail": exc.message})
            return
        if isinstance(body, LocalState):
            self.outbox = body.outbox.to_map()
        elif isinstance(body, LocalDetach):
            self.runtime_state = body.state
            await self.link.send(RuntimeState(state=self.runtime_state,
                                              version=self.runtime_version).frame())
        elif isinstance(body, LocalGoodbye):
            self.goodbye_reason = body.reason or "node stopping"
            self.stop.set()
        elif isinstance(body, LocalReconnect):
            if self.hello is not None:
                self.hello["epoch"] = body.epoch
            await self.link.reconnect_now("runtime started a new stream epoch")

    async def _runtime_gone(self) -> None:
        """The runtime's socket closed: a crash unless it said it was detaching."""
        self.runtime = None
        if self.runtime_state == "attached":
            self.runtime_state = "detached"
        logger.info("runtime detached", extra={"state": self.runtime_state})
        await self.link.send(RuntimeState(state=self.runtime_state,
                                          version=self.runtime_version).frame())
        self._publish()

    def _session_frame(self) -> Frame:
        body: dict[str, Any] = {"connected": self.welcome is not None}
        if self.welcome is not None:
            body["welcome"] = self.welcome.to_body()
            body["acks"] = {EVT_STREAM: self.evt_acked}
        return Frame(t="local.session", b=body)

    # -- LinkHandler (the controller side) --------------------------------------------------

    async def hello_state(self) -> HelloState:
        hello = self.hello or {}
        return HelloState(epoch=int(hello.get("epoch") or 0), cmd_applied=self.cmd_applied,
                          session_id=self.session_id,
                          runtime={"state": self.runtime_state,
                                   "version": self.runtime_version},
                          capabilities=tuple(hello.get("capabilities") or ()),
                          labels=dict(hello.get("labels") or {}))

    def heartbeat_body(self) -> Heartbeat:
        st = self.link.status
        return Heartbeat(uptime_s=round(time.monotonic() - self.started, 3),
                         runtime={"state": self.runtime_state,
                                  "version": self.runtime_version},
                         outbox=self.outbox, acks={CMD_STREAM: self.cmd_applied},
                         transport={"rtt_ms": st.rtt_ms, "reconnects": st.reconnects,
                                    "clock_offset_ms": st.clock_offset_ms},
                         update=self.update_view())

    # -- runtime self-update (the supervisor's local.update) ---------------------------------

    async def _on_update(self, frame: Frame) -> None:
        """Rule 5: the supervisor's ``local.update`` (its own short connection, parsed once
        here) replaces the update shown in heartbeats, and a heartbeat goes at once so the
        controller shows ``updating`` before the runtime detaches (the supervisor waits for
        ``local.updated``, sent after it). Bad ones are ignored."""
        try:
            body = LocalUpdate.parse(frame)
        except BadFrame as exc:
            logger.warning("supervisor sent a bad local.update; ignored",
                           extra={"detail": exc.message})
            return
        now = time.monotonic()
        update = body.update
        if update.stage != self.update.stage:
            self._update_since = now
        self.update = update
        self._update_until = now + (update.deadline_s or 0.0) + UPDATE_GRACE_S
        logger.info("runtime update stage", extra={"stage": update.stage,
                                                    "version": update.version})
        self._publish()
        await self.link.heartbeat_now()

    def update_view(self) -> UpdateInfo:
        """The update in progress, with its age; empty once ended or past its deadline."""
        now = time.monotonic()
        if self.update.stage is None or now > self._update_until:
            return UpdateInfo()
        return UpdateInfo(stage=self.update.stage, version=self.update.version,
                          slot=self.update.slot, deadline_s=self.update.deadline_s,
                          age_s=round(now - self._update_since, 3))

    async def on_welcome(self, welcome: Welcome) -> None:
        self.welcome = welcome
        self.session_id = welcome.session_id
        self.evt_acked = int(welcome.acks.get(EVT_STREAM, 0))
        # The controller names the cmd cursor it resends after (0 in a new cmd epoch): the
        # heartbeat's acks.cmd must not carry a cursor of an older epoch (docs/protocol.md §3).
        self.cmd_applied = int(welcome.acks.get(CMD_STREAM, self.cmd_applied))
        if self.runtime is not None:
            await self.runtime.send(self._session_frame())
        self._publish()

    async def on_frame(self, frame: Frame) -> None:
        if frame.t in ("edge.ack", "edge.heartbeat_ack"):
            acks = frame.b.get("acks") or {}
            n = acks.get(EVT_STREAM) if isinstance(acks, dict) else None
            if isinstance(n, int) and n > self.evt_acked:
                self.evt_acked = n
        if self.runtime is not None:
            await self.runtime.send(frame)

    async def on_disconnected(self) -> None:
        self.welcome = None
        if self.runtime is not None:
            await self.runtime.send(self._session_frame())
        self._publish()

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"node_id": self.identity.node_id, "pid": os.getpid(), "version": __version__,
                "updated_at": time.time(), "transport": self.transport_view(),
                "runtime": {"state": self.runtime_state,
                            "pid": self.runtime.pid if self.runtime else None},
                "update": self.update_view().to_map() or None,
                "cursors": {"cmd_applied": self.cmd_applied, "evt_acked": self.evt_acked},
                "event_loop": {"tasks": live_tasks()}}  # a task leak grows it (the soak)

    def _link_status_changed(self, status: LinkStatus) -> None:
        self._publish()
        if self.runtime is not None:
            self._forward_status = True
            self._status_wake.set()

    def transport_view(self) -> dict[str, Any]:
        """The link as the runtime's readiness tree needs it; ages, not timestamps, since
        the two processes' monotonic clocks are not comparable."""
        st = self.link.status
        now = time.monotonic()
        return {"state": st.state, "url": st.url, "session_id": st.session_id,
                "connected_since": st.connected_since, "reconnects": st.reconnects,
                "last_close_code": st.last_close_code,
                "last_close_reason": st.last_close_reason, "backoff_s": st.backoff_s,
                "rtt_ms": st.rtt_ms, "clock_offset_ms": st.clock_offset_ms,
                "last_ack_age_s": None if st.last_heartbeat_ack is None
                else round(now - st.last_heartbeat_ack, 3)}

    async def _status_forwarder(self) -> None:
        """Sends ``local.status`` to the attached runtime when the link changes (coalesced)."""
        while True:
            await self._status_wake.wait()
            self._status_wake.clear()
            runtime = self.runtime
            if runtime is not None and self._forward_status:
                self._forward_status = False
                await runtime.send(Frame(t="local.status", b=self.transport_view()))

    def _publish(self) -> None:
        if self._on_status is not None:
            self._on_status(self.status())


def write_status_file(path: os.PathLike[str] | str) -> Callable[[dict[str, Any]], None]:
    """A status sink that keeps ``path`` as an atomically replaced JSON snapshot."""
    def sink(status: dict[str, Any]) -> None:
        tmp = f"{os.fspath(path)}.tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as fh:
                json.dump(status, fh, indent=2)
            os.replace(tmp, path)
    return sink



"""The runtime's link to its sidecar over the Unix socket (``<state-dir>/sidecar.sock``).

:class:`SidecarLink` attaches with the runtime's cursors, relays edge frames both ways, and
tells its handler when a controller session starts or ends (``local.session``). When the
sidecar goes away it brings a new one up (``ensure_sidecar``) and attaches again; the new
sidecar dials with the runtime's session id, so the controller sees the session resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tether.protocol.classes import EVT_STREAM
from tether.protocol.errors import BadFrame, TetherError
from tether.protocol.frames import Frame, Welcome
from tether.protocol.local import LocalDecoder, encode_local

logger = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
WRITE_CHUNK = 256 * 1024  # send_many joins frames into writes of about this size
CONNECT_TIMEOUT_S = 2.0
MAX_RETRY_S = 1.0


class LinkStopped(Exception):
    """The controller ended this node for good (4403, 4409, 4426): the runtime stops."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


class SidecarRefused(TetherError):
    default_code = "sidecar_refused"


class ReconnectNeeded(Exception):
    """Raised by the handler's on_welcome: the runtime started a new evt epoch and the
    sidecar must dial again with it."""


class LinkHandler(Protocol):
    def attach_info(self) -> dict[str, Any]: ...

    async def on_welcome(self, welcome: Welcome) -> None: ...

    async def on_frame(self, frame: Frame) -> None: ...

    async def on_disconnected(self) -> None: ...

    def on_transport_status(self, status: dict[str, Any]) -> None: ...

    def on_sidecar_lost(self) -> None: ...


@dataclass(slots=True)
class LocalStatus:
    attached: bool = False
    sidecar_pid: int | None = None
    sidecar_version: str | None = None
    controller_session: str | None = None
    sidecar_restarts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class SidecarLink:
    def __init__(self, *, socket_path: Path, handler: LinkHandler,
                 ensure_sidecar: Callable[[], Awaitable[None]]) -> None:
        self.socket_path = socket_path
        self.handler = handler
        self.ensure_sidecar = ensure_sidecar
        self.connected = asyncio.Event()  # a controller session is up, through the sidecar
        self.attached = asyncio.Event()
        self.status = LocalStatus()
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._closed = asyncio.Event()

    async def run(self) -> None:
        """Attach, serve, and re-attach (starting a sidecar when none runs) until stopped.
        Raises LinkStopped or SidecarRefused."""
        delay = 0.05
        first = True
        while not self._stopping:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except (OSError, TimeoutError):
                await self.ensure_sidecar()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            if not first:
                self.status.sidecar_restarts += 1
            first, delay = False, 0.05
            self._writer = writer
            self._closed.clear()
            try:
                await self._serve(reader)
            except (OSError, BadFrame) as exc:
                logger.warning("sidecar link failed", extra={"detail": str(exc)})
            finally:
                self._writer = None
                self._closed.set()
                self.attached.clear()
                self.status.attached = False
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                if self.connected.is_set():
                    self.connected.clear()
                    await self.handler.on_disconnected()
                if not self._stopping:
                    self.handler.on_sidecar_lost()

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        await self._write(Frame(t="local.attach", b=self.handler.attach_info()))
        decoder = LocalDecoder()
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                if not self._stopping:
                    logger.warning("sidecar went away; starting or re-attaching one")
                return
            for frame in decoder.feed(data):
                await self._dispatch(frame)

    async def _dispatch(self, frame: Frame) -> None:
        t = frame.t
        if t == "local.attached":
            sidecar = frame.b.get("sidecar") or {}
            self.status.attached = True
            self.status.sidecar_pid = sidecar.get("pid")
            self.status.sidecar_version = sidecar.get("version")
            self.attached.set()
        elif t == "local.refused":
            raise SidecarRefused(f"the sidecar refused this runtime: {frame.b.get('reason')}")
        elif t == "local.session":
            await self._on_session(frame.b)
        elif t == "local.status":
            self.handler.on_transport_status(dict(frame.b))
        elif t == "local.stopped":
            raise LinkStopped(int(frame.b.get("code") or 0), str(frame.b.get("reason") or ""))
        else:
            await self.handler.on_frame(frame)

    async def _on_session(self, body: dict[str, Any]) -> None:
        if not body.get("connected"):
            self.status.controller_session = None
            if self.connected.is_set():
                self.connected.clear()
                await self.handler.on_disconnected()
            return
        raw = dict(body.get("welcome") or {})
        acks = body.get("acks")
        if isinstance(acks, dict) and isinstance(acks.get(EVT_STREAM), int):
            raw["acks"] = {EVT_STREAM: acks[EVT_STREAM]}  # the sidecar's latest, not stale
        welcome = Welcome.from_body(raw)
        try:
            await self.handler.on_welcome(welcome)
        except ReconnectNeeded:
            await self._write(Frame(t="local.reconnect",
                                    b={"epoch": self.handler.attach_info()["epoch"]}))
            return
        self.status.controller_session = welcome.session_id
        self.connected.set()

    async def _write(self, frame: Frame) -> bool:
        return await self._write_bytes(encode_local(frame))

    async def _write_bytes(self, data: bytes) -> bool:
        writer = self._writer
        if writer is None:
            return False
        try:
            async with self._lock, asyncio.timeout(10):
                writer.write(data)
                await writer.drain()
        except (OSError, TimeoutError, RuntimeError):
            return False
        return True

    # -- the surface the runtime uses --------------------------------------------------------

    async def send(self, frame: Frame) -> bool:
        """Relay an edge frame; False when there is no controller session (class A frames
        stay in the outbox and are re-sent from the controller's cursor next session)."""
        if not self.connected.is_set():
            return False
        return await self._write(frame)

    async def send_many(self, frames: Sequence[Frame]) -> bool:
        """Relay ``frames`` in order with one write: all of them reach the sidecar's socket
        buffer, or (False) the link is gone and the caller keeps them for the next session."""
        if not frames or not self.connected.is_set():
            return False
        return await self.send_encoded(encode_local(frame) for frame in frames)

    async def send_encoded(self, payloads: Iterable[bytes]) -> bool:
        """:meth:`send_many` for frames encoded already (:func:`encode_local`, or
        :func:`frame_local` of a spliced frame), taken lazily: same contract."""
        if not self.connected.is_set():
            return False
        parts: list[bytes] = []
        size = 0
        sent_any = False
        for data in payloads:
            parts.append(data)
            size += len(data)
            if size >= WRITE_CHUNK:  # bounded memory however large the frames are
                if not await self._write_bytes(b"".join(parts)):
                    return False
                parts, size, sent_any = [], 0, True
        if not parts:
            return sent_any
        return await self._write_bytes(b"".join(parts))

    async def send_local(self, frame: Frame) -> bool:
        return await self._write(frame)

    async def goodbye(self, reason: str) -> None:
        """Full stop: the sidecar says goodbye to the controller and exits."""
        self._stopping = True
        if await self._write(Frame(t="local.goodbye", b={"reason": reason})):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._closed.wait()

    async def detach(self, state: str) -> None:
        """The runtime is going away but the node is not (``restarting``)."""
        self._stopping = True
        await self._write(Frame(t="local.detach", b={"state": state}))

    def stop(self) -> None:
        self._stopping = True

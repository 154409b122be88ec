"""The sidecar's transport to the controller.

:class:`ControllerLink` dials, runs the handshake (PROTOCOL.md §4), sends heartbeats, hands
every steady-state frame to its :class:`LinkHandler` (the relay), and reconnects with
full-jitter backoff, reacting to each close code as PROTOCOL.md §7 says. It holds no durable
state: cursors and the outbox belong to the node runtime.

The protocol decisions are the node session core's
(:class:`~tether.protocol.session.NodeSession`): every frame, each phase's deadline
(TIMEOUT) and the transport's close (CLOSE) are stepped through the node role's handshake
table; the link sends the hello, accepts the welcome or hands the frame on as the table
answers, and executes the Close and the one End an ending queues (the End is what the
reconnect decision reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, Protocol

import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect

from tether.common import __version__, failpoints
from tether.protocol.backoff import backoff_delays
from tether.protocol.codec import (
    BATCH_OVERHEAD,
    MAX_FRAME_BYTES,
    MSGPACK_SUBPROTOCOL,
    decode_msgpack,
    encode_batch,
    encode_msgpack,
)
from tether.protocol.errors import (
    BadFrame,
    CloseCode,
    FrameTooLarge,
    Reaction,
    RemoteProtocolError,
    close_spec,
    reaction_for_close,
)
from tether.protocol.frames import (
    Challenge,
    Frame,
    Goodbye,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Welcome,
)
from tether.protocol.handshake import Action, State
from tether.protocol.session import NODE_HANDLE, Close, End, NodeSession
from tether.protocol.signing import sign_hello
from tether.tools.soak import recorder

logger = logging.getLogger(__name__)

RESET_AFTER_S = 60.0  # a session that lasted this long resets the backoff
MAX_BACKOFF_S = 30.0  # PROTOCOL.md §7's cap, where BACKOFF_MAX goes at once


@dataclass(frozen=True, slots=True)
class HelloState:
    epoch: int
    cmd_applied: int
    session_id: str | None
    runtime: dict[str, Any]
    capabilities: tuple[str, ...] = ("exec",)
    labels: dict[str, str] = field(default_factory=dict)


class LinkHandler(Protocol):
    """What the link needs from its owner (the runtime)."""

    def hello_state(self) -> Awaitable[HelloState]: ...

    def heartbeat_body(self) -> Heartbeat: ...

    async def on_welcome(self, welcome: Welcome) -> None: ...

    async def on_frame(self, frame: Frame) -> None: ...

    async def on_disconnected(self) -> None: ...


class ReconnectNeeded(Exception):
    """Raised by a handler to end the current session and dial again at once."""


class LinkStopped(Exception):
    """The link ended for good (final close code or stop()); ``code`` says why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """How the sidecar trusts the controller: the system CA store, or ``ca_file``; and,
    optionally, SHA-256 pins (hex) of the controller's certificate (DER)."""

    ca_file: str | None = None
    pins: frozenset[str] = frozenset()

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


def cert_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _pin_mismatch(ws: ClientConnection, pins: frozenset[str]) -> str | None:
    """None when the peer certificate matches a pin, else the reason."""
    ssl_object = ws.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return "certificate pinning needs a wss:// controller URL"
    der = ssl_object.getpeercert(binary_form=True)
    got = cert_sha256(der) if der else "none"
    if got in pins:
        return None
    return f"controller certificate sha256 {got} matches no configured pin"


@dataclass(slots=True)
class LinkStatus:
    state: str = "disconnected"  # disconnected | connecting | connected | stopped
    url: str | None = None
    session_id: str | None = None
    connected_since: float | None = None
    reconnects: int = 0
    last_close_code: int | None = None
    last_close_reason: str | None = None
    backoff_s: float = 0.0
    rtt_ms: float | None = None
    clock_offset_ms: float | None = None
    last_heartbeat_ack: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def pack_messages(payloads: Sequence[bytes], *, max_batch: int,
                  max_bytes: int) -> Iterator[bytes]:
    """WebSocket messages for encoded frames, in order: consecutive frames share one
    ``edge.batch`` when the controller takes batches (``max_batch`` > 1), each message at
    most ``max_batch`` frames and ``max_bytes``; a frame alone goes as itself. A frame over
    ``max_bytes`` on its own is dropped with a warning, never sent."""
    group: list[bytes] = []
    size = BATCH_OVERHEAD
    for data in payloads:
        if len(data) > max_bytes:
            logger.warning("dropping a frame over the frame limit",
                           extra={"detail": f"{len(data)} bytes"})
            continue
        if max_batch <= 1:
            yield data
            continue
        if group and (len(group) >= max_batch or size + len(data) > max_bytes):
            yield group[0] if len(group) == 1 else encode_batch(group)
            group, size = [], BATCH_OVERHEAD
        group.append(data)
        size += len(data)
    if group:
        yield group[0] if len(group) == 1 else encode_batch(group)


def edge_url(controller_url: str) -> str:
    """``http(s)://host:port`` (or ws(s)://) -> the edge WebSocket URL."""
    url = controller_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[len("https://"):]
    elif url.startswith("http://"):
        url = "ws://" + url[len("http://"):]
    if not url.endswith("/v1/edge/connect"):
        url += "/v1/edge/connect"
    return url


class ControllerLink:
    def __init__(self, *, controller_url: str, node_id: str, key: Ed25519PrivateKey,
                 handler: LinkHandler, fallback_urls: tuple[str, ...] = (),
                 tls: TlsOptions | None = None, proxy: str | bool | None = True,
                 connect_timeout_s: float = 10.0,
                 handshake_timeout_s: float = 10.0, max_frame_bytes: int = MAX_FRAME_BYTES,
                 rng: random.Random | None = None,
                 on_status: Callable[[LinkStatus], None] | None = None) -> None:
        self.urls = [edge_url(u) for u in (controller_url, *fallback_urls)]
        self._url_index = 0
        self.tls = tls or TlsOptions()
        self._ssl: ssl.SSLContext | None = None  # built on the first wss:// dial
        self.proxy: str | Literal[True] | None = True if proxy is True else (proxy or None)
        self.node_id = node_id
        self.key = key
        self.handler = handler
        self.connect_timeout_s = connect_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.rng = rng or random.Random()
        self.status = LinkStatus()
        self._on_status = on_status
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._stopping = False
        self._reconnect_now = False
        self._welcome: Welcome | None = None
        self._hb_sent: dict[str, float] = {}
        self._hb_counter = 0
        self._hello_epoch = 0
        self.connected = asyncio.Event()

    # -- public API -------------------------------------------------------------------

    async def send(self, frame: Frame) -> bool:
        """Send one frame on the live session; False when there is none (the caller keeps
        class A frames in its outbox and they are replayed after the next welcome)."""
        if self._ws is None or not self.connected.is_set():
            return False
        return await self.send_raw([encode_msgpack(frame, max_frame_bytes=self.max_frame_bytes)])

    async def send_raw(self, payloads: Sequence[bytes]) -> bool:
        """Send already-encoded frames in order on the live session; False when there is none
        or it failed part way (class A frames are replayed from the outbox next session). A
        payload over the session's frame limit is dropped with a warning, never sent."""
        ws, welcome = self._ws, self._welcome
        if ws is None or welcome is None or not self.connected.is_set():
            return False
        limit = min(self.max_frame_bytes, welcome.max_frame)
        try:
            async with self._send_lock, asyncio.timeout(self.handshake_timeout_s):
                for message in pack_messages(payloads, max_batch=welcome.max_batch,
                                             max_bytes=limit):
                    await ws.send(message)
        except (websockets.ConnectionClosed, TimeoutError, OSError):
            return False
        if recorder.ARMED or failpoints.ARMED:
            self._sent_class_a(payloads, welcome.session_id)
        return True

    def _sent_class_a(self, payloads: Sequence[bytes], session_id: str) -> None:
        """Soak instruments (armed only): a ``sent`` record per class A ``evt`` frame just
        written to the socket, then the failpoint ``sidecar.after_send``."""
        evt = []
        for payload in payloads:
            with contextlib.suppress(Exception):
                frame = decode_msgpack(payload, max_frame_bytes=self.max_frame_bytes)
                if frame.s == "evt" and frame.q is not None:
                    evt.append(frame.q)
        if recorder.ARMED:
            for q in evt:
                recorder.record("sent", node=self.node_id, stream="evt",
                                epoch=self._hello_epoch, q=q, session=session_id)
        if evt and failpoints.ARMED:
            failpoints.hit("sidecar.after_send")

    async def goodbye(self, reason: str) -> None:
        """Say goodbye (the node goes offline at once) and stop reconnecting."""
        self._stopping = True
        ws = self._ws
        if ws is not None and self.connected.is_set():
            with contextlib.suppress(Exception):
                await self.send(Goodbye(reason=reason).frame())
                async with asyncio.timeout(5):
                    await ws.close(CloseCode.NORMAL_CLOSURE, "goodbye")

    def stop(self) -> None:
        self._stopping = True

    async def reconnect_now(self, reason: str) -> None:
        """End the current session (if any) and dial again at once, with a fresh hello."""
        self._reconnect_now = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(CloseCode.NORMAL_CLOSURE, reason[:120])

    def drop_now(self) -> None:
        """Abort the connection without a close handshake, as a failing network would, and
        dial again at once (a path known to be dead gains nothing from a polite close)."""
        self._reconnect_now = True
        ws = self._ws
        if ws is not None:
            ws.transport.abort()

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Dial and serve sessions until stopped. Raises LinkStopped for final codes."""
        delays = backoff_delays(self.rng.uniform)
        while not self._stopping:
            self._set(state="connecting")
            try:
                code, reason, lasted_s = await self._one_session()
            except (LinkStopped, ReconnectNeeded):
                raise
            except Exception as exc:  # a bug must cost a reconnect, never the runtime
                logger.exception("session failed unexpectedly; reconnecting",
                                 extra={"node_id": self.node_id})
                code, reason, lasted_s = None, f"internal error: {exc}", 0.0
            self._set(state="disconnected", session_id=None, connected_since=None,
                      last_close_code=code, last_close_reason=reason)
            await self.handler.on_disconnected()
            if self._stopping:
                break
            if is_final(code):
                self._set(state="stopped")
                raise LinkStopped(code, reason or close_spec(code).meaning)
            if lasted_s >= RESET_AFTER_S:
                delays = backoff_delays(self.rng.uniform)
            delay = next(delays)
            if self._reconnect_now:
                self._reconnect_now = False
                delay = 0.0
            delay = reconnect_delay(code, reason, backoff_s=delay, random=self.rng.random)
            self.status.reconnects += 1
            self._set(backoff_s=round(delay, 3))
            logger.info("reconnecting", extra={"node_id": self.node_id, "code": code,
                                               "reason": reason, "delay_s": round(delay, 3)})
            await asyncio.sleep(delay)
        self._set(state="stopped")

    @property
    def url(self) -> str:
        return self.urls[self._url_index]

    def _fail_over(self) -> None:
        """Dialling failed: the next attempt tries the next controller URL."""
        if len(self.urls) > 1:
            self._url_index = (self._url_index + 1) % len(self.urls)

    async def _one_session(self) -> tuple[int | None, str | None, float]:
        started = time.monotonic()
        url = self.url
        self._set(url=url)
        kwargs: dict[str, Any] = {}
        if url.startswith("wss://"):
            if self._ssl is None:  # loading the trust store costs ~17 ms: only for TLS
                self._ssl = self.tls.context()
            kwargs["ssl"] = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ws = await connect(url, subprotocols=[MSGPACK_SUBPROTOCOL],  # type: ignore[list-item]
                                   max_size=self.max_frame_bytes, compression=None,
                                   ping_interval=None, open_timeout=self.connect_timeout_s,
                                   close_timeout=5, user_agent_header=f"tether/{__version__}",
                                   proxy=self.proxy, **kwargs)
        except TimeoutError:
            self._fail_over()
            return None, f"connect to {url} timed out", 0.0
        except websockets.InvalidStatus as exc:
            self._fail_over()
            return None, f"HTTP {exc.response.status_code} on upgrade from {url}", 0.0
        except websockets.InvalidProxy as exc:
            return None, f"proxy misconfigured: {exc}", 0.0
        except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            self._fail_over()
            return None, f"connect to {url} failed: {exc}", 0.0
        if self.tls.pins:
            mismatch = _pin_mismatch(ws, self.tls.pins)
            if mismatch is not None:
                with contextlib.suppress(Exception):
                    await ws.close(CloseCode.NORMAL_CLOSURE, "certificate pin mismatch")
                self._fail_over()
                return CloseCode.PIN_MISMATCH, mismatch, 0.0
        self._ws = ws
        core = NodeSession()
        recorded: tuple[int, str] | None = None
        transport_error: str | None = None
        ended: End | None = None
        try:
            await self._handshake(ws, core)
            self._set(state="connected", session_id=self._welcome.session_id if self._welcome
                      else None, connected_since=time.time())
            async with asyncio.TaskGroup() as tg:
                hb = tg.create_task(self._heartbeat_loop(), name="link-heartbeat")
                try:
                    await self._read_loop(ws, core)
                finally:
                    hb.cancel()
        except* ReconnectNeeded as group:
            # the handler wants a fresh session: closed politely, recorded as its complaint
            core.closed(CloseCode.NORMAL_CLOSURE, "reconnecting", by_peer=False)
            recorded = CloseCode.PROTOCOL_ERROR, str(group.exceptions[0])
        except* _Ended:
            pass  # the core queued how: a Close and the End
        except* websockets.ConnectionClosed:
            pass
        except* (OSError, TimeoutError) as group:
            transport_error = f"transport error: {group.exceptions[0]}"
        finally:
            self.connected.clear()
            self._ws = None
            self._welcome = None
            self._hb_sent.clear()
            ended = await self._act(ws, core)
            with contextlib.suppress(Exception):
                await ws.close()
        if ended is None:  # the transport closed under the session (the peer, the network)
            core.closed(ws.close_code, transport_error or ws.close_reason or "", by_peer=True)
            ended = await self._act(ws, core)
        code, reason = recorded or (ended.code if ended else None,
                                    ended.reason if ended else None)
        return code, reason or None, time.monotonic() - started

    @staticmethod
    async def _act(ws: ClientConnection, core: NodeSession) -> End | None:
        """Execute the effects the core queued: close the transport as told; the session's
        End (the core queues one per session), if it ended."""
        ended: End | None = None
        for effect in core.take_effects():
            if isinstance(effect, Close):
                with contextlib.suppress(Exception):
                    await ws.close(effect.code, effect.reason[:120])
            else:
                ended = effect
        return ended

    async def _recv(self, ws: ClientConnection, core: NodeSession,
                    timeout_s: float) -> tuple[Frame, tuple[Action, ...]]:
        """The next frame and what the core's table answered for it (HANDLE, SEND_HELLO or
        ACCEPT_WELCOME). Raises :class:`_Ended` once the core ended the session: nothing
        within ``timeout_s`` (the phase's deadline, stepped as TIMEOUT: 4408), the
        controller's goodbye (1000), a frame that is not msgpack, too large or not allowed
        now (4400, 1009)."""
        try:
            async with asyncio.timeout(timeout_s):
                data = await ws.recv()
        except TimeoutError:
            core.timeout(f"nothing from the controller for {timeout_s:g} s")
            raise _Ended from None
        if isinstance(data, str):
            _refuse(core, CloseCode.PROTOCOL_ERROR, "text frame on a msgpack session")
        try:
            frame = decode_msgpack(data, max_frame_bytes=self.max_frame_bytes)
        except FrameTooLarge as exc:
            _refuse(core, CloseCode.FRAME_TOO_LARGE, exc.message)
        except BadFrame as exc:
            _refuse(core, CloseCode.PROTOCOL_ERROR, exc.message)
        try:
            actions = core.receive(frame.t)
        except RemoteProtocolError as exc:
            _refuse(core, CloseCode.PROTOCOL_ERROR, f"{frame.t!r}: {exc.message}")
        if not actions or core.ended:  # the goodbye ended it (or it had ended)
            raise _Ended
        return frame, actions

    async def _handshake(self, ws: ClientConnection, core: NodeSession) -> None:
        """Until the welcome: each frame the table allows, acted on as it says (the
        challenge: send the hello; the welcome: accept it)."""
        while core.state is not State.ESTABLISHED:
            frame, actions = await self._recv(ws, core, self.handshake_timeout_s)
            for action in actions:
                if action is Action.SEND_HELLO:
                    await self._send_hello(ws, core, frame)
                elif action is Action.ACCEPT_WELCOME:
                    await self.handler.on_welcome(self._accept_welcome(core, frame))

    async def _send_hello(self, ws: ClientConnection, core: NodeSession,
                          frame: Frame) -> None:
        try:
            challenge = Challenge.parse(frame)
        except BadFrame as exc:
            _refuse(core, CloseCode.PROTOCOL_ERROR, exc.message)
        if 1 not in challenge.protocols:
            _refuse(core, CloseCode.UNSUPPORTED_PROTOCOL, "controller does not speak protocol 1")
        hs = await self.handler.hello_state()
        self._hello_epoch = hs.epoch  # the evt epoch of this session (history records)
        sig = sign_hello(self.key, challenge.nonce, challenge.controller_id, self.node_id)
        hello = Hello(node_id=self.node_id, sig=sig, epoch=hs.epoch,
                      acks={"cmd": hs.cmd_applied}, session_id=hs.session_id,
                      runtime=hs.runtime, sidecar={"version": __version__, "pid": os.getpid()},
                      capabilities=hs.capabilities, labels=hs.labels,
                      max_frame=self.max_frame_bytes)
        await ws.send(encode_msgpack(hello.frame(), max_frame_bytes=self.max_frame_bytes))

    def _accept_welcome(self, core: NodeSession, frame: Frame) -> Welcome:
        try:
            welcome = Welcome.parse(frame)
        except BadFrame as exc:
            _refuse(core, CloseCode.PROTOCOL_ERROR, exc.message)
        self._welcome = welcome
        self.connected.set()  # before on_welcome, so that it can replay at once
        return welcome

    async def _read_loop(self, ws: ClientConnection, core: NodeSession) -> None:
        assert self._welcome is not None
        # Heartbeat acks arrive at least every heartbeat_s; silence past stale_after_s
        # means the path is dead even if TCP has not noticed.
        idle_s = self._welcome.stale_after_s
        while True:
            frame, actions = await self._recv(ws, core, idle_s)
            if actions is not NODE_HANDLE:  # the table allows nothing else once established
                continue
            if frame.t == HeartbeatAck.TYPE:
                self._on_heartbeat_ack(frame)
            await self.handler.on_frame(frame)

    async def _heartbeat_loop(self) -> None:
        assert self._welcome is not None
        period = self._welcome.heartbeat_s
        while True:
            self._hb_counter += 1
            hb_id = f"hb{self._hb_counter}"
            self._hb_sent = {hb_id: time.monotonic()}
            await self.send(self.handler.heartbeat_body().frame(id=hb_id))
            await asyncio.sleep(period)

    async def heartbeat_now(self) -> bool:
        """An extra heartbeat now (what it carries changed), besides the periodic ones;
        False when there is no session (the next one's first heartbeat carries it)."""
        if not self.connected.is_set():
            return False
        self._hb_counter += 1
        hb_id = f"hb{self._hb_counter}"
        self._hb_sent[hb_id] = time.monotonic()
        return await self.send(self.handler.heartbeat_body().frame(id=hb_id))

    def _on_heartbeat_ack(self, frame: Frame) -> None:
        sent = self._hb_sent.pop(frame.re or "", None)
        try:
            ack = HeartbeatAck.parse(frame)
        except BadFrame:
            return
        now = time.monotonic()
        self.status.last_heartbeat_ack = now
        if sent is not None:
            rtt_s = now - sent
            self.status.rtt_ms = round(rtt_s * 1000, 3)
            self.status.clock_offset_ms = round(ack.time_ms - (time.time() - rtt_s / 2) * 1000,
                                                3)
        if self._on_status is not None:
            self._on_status(self.status)

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        if self._on_status is not None:
            self._on_status(self.status)


class _Ended(Exception):
    """The session's core ended it; its queued effects say how (:meth:`ControllerLink._act`)."""


def _refuse(core: NodeSession, code: int, reason: str) -> NoReturn:
    """This side closes the session for ``code``: stepped as the transport's CLOSE."""
    core.closed(code, reason, by_peer=False)
    raise _Ended


def is_final(close_code: int | None) -> bool:
    """True when this process must not dial again after ``close_code`` (ERROR_TABLE: STOP)."""
    return reaction_for_close(close_code) is Reaction.STOP


def reconnect_delay(close_code: int | None, reason: str | None, *, backoff_s: float,
                    random: Callable[[], float]) -> float:
    """Seconds to wait before dialling again after ``close_code``, as its reaction in
    ERROR_TABLE says: ``backoff_s`` (the next full-jitter delay, or 0 for a reconnect asked
    for) for BACKOFF; 15-30 s at once for BACKOFF_MAX; the announced retry_after plus up to
    50% for RETRY_AFTER. ``random`` is drawn from only for those two. Call only when
    :func:`is_final` is False."""
    reaction = reaction_for_close(close_code)
    if reaction is Reaction.BACKOFF_MAX:  # do not hammer: back off to the maximum
        return MAX_BACKOFF_S * (0.5 + random() / 2)
    if reaction is Reaction.RETRY_AFTER:
        return _retry_after(reason, default=backoff_s) * (1 + random() / 2)
    return backoff_s


def _retry_after(reason: str | None, *, default: float) -> float:
    """4429 carries ``retry_after=<seconds>`` in its close reason."""
    if reason and "retry_after=" in reason:
        with contextlib.suppress(ValueError):
            return max(0.0, float(reason.split("retry_after=", 1)[1].split()[0]))
    return default

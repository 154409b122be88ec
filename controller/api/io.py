"""The operator's end of interactive io (docs/protocol.md "Interactive io"), for the CLI and
the browser alike:

* ``WS /api/v1/nodes/{node_id}/shell``: open a shell on the node (a ``shell`` command,
  queued only if the node is online, audited like every submit), then relay its pty;
* ``WS /api/v1/commands/{command_id}/io``: attach to a running command: its stdin (an
  ``exec`` submitted with ``stdin: true``) and signals (Ctrl-C on ``tether exec``).

Either runs on any replica: frames to the node go through :class:`Router` ``send`` (class
E, to the session wherever it is held), frames from the node come through the
:class:`EventBus` (``io:<node>:<command>``, published by the gateway that holds the
session), and the command's end through its ``command:<id>`` topic (with a store read
every ``POLL_S`` as the backstop for a lost event).

Client frames (JSON, sub-protocol ``tether.v1.json``): ``hello {token}`` first unless the
upgrade carried ``Authorization: Bearer``; on the shell endpoint ``open {argv?, rows, cols,
term?, env?, cwd?}``; then ``input {data, eof?}`` (base64url), ``resize {rows, cols}``,
``signal {signal}``, ``ping``. Server frames: ``welcome {actor}``, ``opened {command_id,
node_id}``, ``credit {bytes}``, ``output {data}``, ``signalled {signal, delivered}``
(``delivered`` false: no live session holds the node, nothing was signalled), ``exit
{state, exit_code, error}`` (then close 1000), ``error {code, message}``, ``ping``
(keepalive), ``pong``.

Rule 1 (auth): the role comes from ``routes._operator`` (operator or above), from the
header or the hello's token alike; a browser's ``Origin`` is checked as on ``/ws``. As on
``/ws``, a socket whose token is revoked or expires is closed with 4401 within
``TOKEN_RECHECK_S`` (services/tokenwatch.py), and a shell it opened is hung up.
Rule 2 (bounded): the client may have at most ``CLIENT_WINDOW`` bytes of input not yet
acked by the node; the server grants it in ``credit`` frames as the node acks, and a client
past it is closed with 4429. Output is acked to the node only once written to the client
(``send`` waits), so the node's window bounds what is in flight end to end.
Rule 3 (ordered): input is sequenced here (``IoSender``, re-sent when acks stall); output is
written in ``seq`` order exactly once, duplicates and gaps dropped (the node re-sends).
Rule 4 (idle is fine): nothing here times out an idle stream; both ends send keepalives
(``ping`` to the client, ``io.ack`` to the node every ``KEEPALIVE_S``), and a client that
goes away hangs the shell up (a ``cancel``), as closing a terminal does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from tether.protocol.codec import JSON_SUBPROTOCOL, encode_json
from tether.protocol.deliver import command_args
from tether.protocol.errors import (
    BadFrame,
    CloseCode,
    Conflict,
    LocalProtocolError,
    NotFound,
    TetherError,
    close_reason,
)
from tether.protocol.frames import (
    MAX_IO_DATA,
    TERMINAL_STATES,
    Frame,
    IoAck,
    IoInput,
    IoOutput,
    IoResize,
    IoSignal,
    as_bytes,
)
from tether.protocol.iostream import DEFAULT_WINDOW, KEEPALIVE_S, IoSender

from ..browser import _origin_allowed
from ..jsonws import WsClose, receive_json
from ..services.events import Subscriber
from ..services.tokenwatch import until_token_invalid
from ..services.topics import io_topic
from .auth import bearer_token
from .routes import ApiServices, _operator

logger = logging.getLogger(__name__)

CLIENT_WINDOW = 256 << 10  # input bytes a client may have unacked (Rule 2)
HELLO_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0
POLL_S = 10.0
TICK_S = 0.5
SHELL_TTL_S = 30.0  # a shell not delivered by then expires instead of starting late
MAX_CLIENT_FRAME = 256 << 10  # one client frame: 64 KiB of input is ~88 KiB as base64


@dataclass(eq=False)
class _Stream:
    """One attached stream's state (owned by one endpoint call)."""

    ws: WebSocket
    api: ApiServices
    node_id: str
    command_id: str
    hang_up: bool  # a client that goes away cancels the command (a shell)
    actor: str
    to_node: IoSender = field(default_factory=lambda: IoSender(window=0))
    pending: deque[bytes] = field(default_factory=deque)  # client input not yet sequenced
    pending_bytes: int = 0
    client_eof: bool = False
    out_applied: int = 0
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)
    routing: asyncio.Lock = field(default_factory=asyncio.Lock)
    node_acked_at: float = 0.0
    pinged_at: float = 0.0
    polled_at: float = 0.0
    final: dict[str, Any] | None = None
    node_heard: bool = False  # the node announced the stream (its first io.ack)
    sub: Subscriber | None = None

    def subscribe(self) -> None:
        """(Re)subscribe to the stream's topics with a fresh bounded subscriber."""
        self.unsubscribe()
        self.sub = Subscriber(max_queue=1024, max_bytes=4 << 20)
        self.api.bus.subscribe(self.sub, [io_topic(self.node_id, self.command_id),
                                          f"command:{self.command_id}"])

    def unsubscribe(self) -> None:
        if self.sub is not None:
            self.api.bus.unsubscribe(self.sub)
            self.sub = None

    async def send(self, t: str, body: dict[str, Any]) -> None:
        text = encode_json(Frame(t=t, b=body))
        async with self.sending:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await self.ws.send_text(text)
            except TimeoutError:
                raise WsClose(CloseCode.RATE_LIMITED, "client is not reading: too slow"
                             ) from None

    async def to_router(self, frame: Frame) -> bool:
        async with self.routing:
            return await self.api.router.send(self.node_id, frame)


def _http_view(ws: WebSocket, token: str | None) -> Request:
    """The upgrade as an HTTP request for ``_operator`` (Rule 1), with ``token`` as its
    bearer when the client sent it in its hello."""
    headers = [(k, v) for k, v in ws.scope["headers"] if k != b"authorization"]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode("latin-1", "replace")))
    else:
        headers += [(k, v) for k, v in ws.scope["headers"] if k == b"authorization"]
    return Request({**ws.scope, "type": "http", "headers": headers})


async def _authenticate(ws: WebSocket) -> tuple[str, str]:
    """(the caller as the audit log names it, its token); raises as ``_operator`` does."""
    token: str | None = None
    if not ws.headers.get("authorization"):
        frame = await receive_json(ws, HELLO_TIMEOUT_S, MAX_CLIENT_FRAME)
        if frame is None:
            raise WsClose(CloseCode.NORMAL_CLOSURE, "closed before hello")
        if frame.t != "hello" or not isinstance(frame.b.get("token"), str):
            raise WsClose(CloseCode.PROTOCOL_ERROR, "expected hello {token} first")
        token = frame.b["token"]
    actor = await _operator(_http_view(ws, token))
    if token is None:  # _operator found it in the header
        token = bearer_token(ws.headers.get("authorization", "")) or ""
    return actor, token


async def _watch_token(api: ApiServices, token: str) -> None:
    """Rule 1: 4401 once the token is no longer valid."""
    why = await until_token_invalid(api.store, token)
    raise WsClose(CloseCode.AUTH_FAILED, f"operator token is no longer valid ({why})")


async def _accept(ws: WebSocket) -> bool:
    if JSON_SUBPROTOCOL not in (ws.scope.get("subprotocols") or []):
        await ws.accept()
        await ws.close(CloseCode.UNSUPPORTED_PROTOCOL, f"offer sub-protocol {JSON_SUBPROTOCOL}")
        return False
    await ws.accept(subprotocol=JSON_SUBPROTOCOL)
    if not _origin_allowed(ws, ws.app.state.browser.config.allowed_origins):
        await ws.close(CloseCode.FORBIDDEN, "origin not allowed")
        return False
    return True


async def shell_endpoint(ws: WebSocket) -> None:
    """WS /api/v1/nodes/{node_id}/shell (module docstring)."""
    await _serve(ws, shell=True)


async def command_io_endpoint(ws: WebSocket) -> None:
    """WS /api/v1/commands/{command_id}/io (module docstring)."""
    await _serve(ws, shell=False)


async def _serve(ws: WebSocket, *, shell: bool) -> None:
    if not await _accept(ws):
        return
    api: ApiServices = ws.app.state.api
    stream: _Stream | None = None
    try:
        actor, token = await _authenticate(ws)
        await _send_plain(ws, "welcome", {"actor": actor})
        stream = await (_open_shell(ws, api, actor) if shell
                        else _attach(ws, api, actor))
        stream.subscribe()
        await stream.send("opened", {"command_id": stream.command_id,
                                     "node_id": stream.node_id})
        await stream.send("credit", {"bytes": CLIENT_WINDOW})
        await _check_done(stream)
        if stream.final is None:
            # Say hello to the node's end at once: it answers with its window (a stream
            # that started before this attach announced it to nobody).
            await _ack_node(stream)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(_from_client(stream)),
                         tg.create_task(_from_node(stream)),
                         tg.create_task(_tick(stream))]
                watch = tg.create_task(_watch_token(api, token))  # ends only by raising
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in [*tasks, watch]:
                    task.cancel()
        if stream.final is not None:
            await stream.send("exit", stream.final)
            code, reason = CloseCode.NORMAL_CLOSURE, "exited"
        else:
            code, reason = CloseCode.NORMAL_CLOSURE, "bye"
    except* WsClose as group:
        first = group.exceptions[0]
        code, reason = ((first.code, first.reason) if isinstance(first, WsClose)
                        else (CloseCode.INTERNAL_ERROR, ""))
    except* TetherError as group:
        err = group.exceptions[0]
        assert isinstance(err, TetherError)
        with contextlib.suppress(Exception):
            await _send_plain(ws, "error", {"code": err.code, "message": err.message})
        code, reason = err.close_code, err.message
    except* (OSError, RuntimeError, WebSocketDisconnect):
        code, reason = CloseCode.CONNECTION_LOST, "connection lost"
    finally:
        if stream is not None:
            stream.unsubscribe()
            if stream.final is None and stream.hang_up:
                await _hang_up(stream)
    if ws.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await ws.close(code, close_reason(reason))


async def _send_plain(ws: WebSocket, t: str, body: dict[str, Any]) -> None:
    async with asyncio.timeout(SEND_TIMEOUT_S):
        await ws.send_text(encode_json(Frame(t=t, b=body)))


async def _open_shell(ws: WebSocket, api: ApiServices, actor: str) -> _Stream:
    """The ``open`` frame, checked as a submit's args are, then the ``shell`` command (only
    to an online node: a shell that waits in a queue helps nobody)."""
    node_id = ws.path_params["node_id"]
    frame = await receive_json(ws, HELLO_TIMEOUT_S, MAX_CLIENT_FRAME)
    if frame is None:
        raise WsClose(CloseCode.NORMAL_CLOSURE, "closed before open")
    if frame.t != "open":
        raise WsClose(CloseCode.PROTOCOL_ERROR, f"expected open, got {frame.t!r}")
    try:
        args = command_args("shell", dict(frame.b))
    except BadFrame as exc:
        raise WsClose(CloseCode.PROTOCOL_ERROR, exc.message) from None
    # Online as the node views judge it (the stored row when another replica holds the
    # session), not as this replica's memory alone does.
    row = await api.store.get_node(node_id)
    if row is None:
        raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes list'")
    liveness = api.nodes.view(row).get("liveness")
    if liveness != "online":
        raise Conflict(f"node {node_id!r} is {liveness}; a shell needs it online",
                       code="node_offline")
    command, _ = await api.commands.submit(node_id, kind="shell", args=args,
                                           ttl_s=SHELL_TTL_S, idem_key=None, actor=actor)
    logger.info("shell opened", extra={"node_id": node_id, "command_id": command.command_id,
                                       "actor": actor})
    return _Stream(ws=ws, api=api, node_id=node_id, command_id=command.command_id,
                   hang_up=True, actor=actor)


async def _attach(ws: WebSocket, api: ApiServices, actor: str) -> _Stream:
    command = await api.commands.get(ws.path_params["command_id"])
    return _Stream(ws=ws, api=api, node_id=command.node_id, command_id=command.command_id,
                   hang_up=command.kind == "shell", actor=actor)


async def _hang_up(stream: _Stream) -> None:
    """The client went away from a shell: cancel it (class A: it reaches the node even
    if its session is down now)."""
    with contextlib.suppress(TetherError):
        await stream.api.commands.control(stream.command_id, "cancel", actor=stream.actor)


async def _check_done(stream: _Stream) -> None:
    command = await stream.api.commands.get(stream.command_id)
    stream.polled_at = time.monotonic()
    if command.state in TERMINAL_STATES:
        stream.final = {"state": command.state, "exit_code": command.exit_code,
                        "error": command.error}


# -- client -> node --------------------------------------------------------------------------

async def _from_client(stream: _Stream) -> None:
    while True:
        frame = await receive_json(stream.ws, None, MAX_CLIENT_FRAME)
        if frame is None:
            return
        try:
            await _client_frame(stream, frame)
        except BadFrame as exc:
            await stream.send("error", {"code": exc.code, "message": exc.message})


async def _client_frame(stream: _Stream, frame: Frame) -> None:
    t, b = frame.t, frame.b
    if t == "input":
        if stream.client_eof:
            raise BadFrame("input after eof")
        data = as_bytes(b.get("data") or b"", "data")
        eof = b.get("eof", False)
        if len(data) > MAX_IO_DATA or not isinstance(eof, bool):
            raise BadFrame(f"input is at most {MAX_IO_DATA} bytes of data and an eof flag")
        if stream.pending_bytes + stream.to_node.unacked_bytes + len(data) > CLIENT_WINDOW:
            raise WsClose(CloseCode.RATE_LIMITED, "input over the credit granted: too fast")
        if data:
            stream.pending.append(data)
            stream.pending_bytes += len(data)
        stream.client_eof = eof
        await _pump_input(stream)
    elif t == "resize":
        body = IoResize.from_body({**b, "command_id": stream.command_id})
        await stream.to_router(body.frame())
    elif t == "signal":
        body_s = IoSignal.from_body({**b, "command_id": stream.command_id})
        delivered = await stream.to_router(body_s.frame())
        await stream.send("signalled", {"signal": body_s.signal, "delivered": delivered})
    elif t == "ping":
        await stream.send("pong", {})
    else:
        raise BadFrame(f"unknown frame type {t!r}", code="unknown_type")


async def _pump_input(stream: _Stream) -> None:
    """Sequence what the node's window takes of the pending input and send it."""
    sender = stream.to_node
    while True:
        room = sender.room()
        if stream.pending and room > 0:
            head = stream.pending[0]
            piece = head[:room]
            if len(piece) == len(head):
                stream.pending.popleft()
            else:
                stream.pending[0] = head[len(piece):]
            stream.pending_bytes -= len(piece)
            eof = stream.client_eof and not stream.pending
        elif not stream.pending and stream.client_eof and not sender.eof_sent \
                and sender.window > 0:
            piece, eof = b"", True
        else:
            return
        item = sender.push(piece, time.monotonic(), eof=eof)
        await stream.to_router(IoInput(command_id=stream.command_id, seq=item.seq,
                                       data=item.data, eof=item.eof).frame())


# -- node -> client --------------------------------------------------------------------------

async def _from_node(stream: _Stream) -> None:
    while True:
        assert stream.sub is not None
        event = await stream.sub.get()
        if event is None:  # cut off (fell behind): the node re-sends what was not acked
            stream.subscribe()
            await _check_done(stream)
            if stream.final is not None:
                return
            continue
        try:
            if event.kind == "io.output":
                await _on_output(stream, IoOutput.from_body(event.data))
            elif event.kind == "io.ack":
                await _on_node_ack(stream, IoAck.from_body(event.data))
            elif event.data.get("state") in TERMINAL_STATES:
                await _check_done(stream)
                if stream.final is not None:
                    return
        except BadFrame:
            continue  # the gateway parsed it already; a broken event is dropped


async def _on_output(stream: _Stream, body: IoOutput) -> None:
    if body.seq == stream.out_applied + 1:
        await stream.send("output", {"data": body.data})
        stream.out_applied = body.seq
    await _ack_node(stream)


async def _ack_node(stream: _Stream) -> None:
    stream.node_acked_at = time.monotonic()
    await stream.to_router(IoAck(command_id=stream.command_id, seq=stream.out_applied,
                                 window=DEFAULT_WINDOW).frame())


async def _on_node_ack(stream: _Stream, body: IoAck) -> None:
    before = stream.to_node.unacked_bytes + stream.pending_bytes
    try:
        stream.to_node.on_ack(body.seq, body.window, time.monotonic())
    except LocalProtocolError:
        return
    if not stream.node_heard:  # the stream just started there: open its output window
        stream.node_heard = True
        await _ack_node(stream)
    await _pump_input(stream)
    granted = before - (stream.to_node.unacked_bytes + stream.pending_bytes)
    if granted > 0:
        await stream.send("credit", {"bytes": granted})


async def _tick(stream: _Stream) -> None:
    """Re-sends of stalled input, keepalives both ways, the backstop poll (Rule 4)."""
    while True:
        await asyncio.sleep(TICK_S)
        now = time.monotonic()
        sender = stream.to_node
        if sender.due(now):
            sender.resent(now)
            for item in sender.unacked():
                await stream.to_router(IoInput(command_id=stream.command_id, seq=item.seq,
                                               data=item.data, eof=item.eof).frame())
        if now - stream.node_acked_at >= KEEPALIVE_S:
            await _ack_node(stream)
        if now - stream.pinged_at >= KEEPALIVE_S:
            stream.pinged_at = now
            await stream.send("ping", {})
        if now - stream.polled_at >= POLL_S:
            await _check_done(stream)
            if stream.final is not None:
                return

"""The browser and operator stream on ``/ws`` (PROTOCOL.md §9, JSON sub-protocol).

Client: ``hello`` {token} -> ``welcome`` {role}; then ``subscribe`` {topics} -> one
``snapshot`` {topic, data} per topic, then ``subscribed``; then the server pushes ``event``
frames {topic, kind, data}. Rule: a topic's snapshot is sent before any of its events, and
events that happened while it was built follow it (a client may see a change twice, never
miss one), so a client that reconnects resyncs by subscribing again. A client whose
bounded event queue overflows is closed with 4429 (it reconnects and resubscribes) so it
never slows the controller. Origin: browsers (which send ``Origin``) must be same-origin
or allow-listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketState

from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.errors import BadFrame, FrameTooLarge, LocalProtocolError, NotFound
from tether.protocol.frames import Frame

from .services.events import Subscriber
from .views import command_view, log_item

if TYPE_CHECKING:
    from .app import Controller

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 300.0
SEND_TIMEOUT_S = 10.0
MAX_TOPICS = 256
TOPIC_PREFIXES = ("node:", "command:", "commands:", "logs:", "monitor:")
# Events that could not be encoded as a /ws frame (a value JSON cannot hold, or over the
# frame limit): skipped, the subscriber kept; shown as tether_ws_events_unencodable_total.
unencodable_total = 0


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _origin_allowed(ws: WebSocket, allowed: tuple[str, ...]) -> bool:
    origin = ws.headers.get("origin")
    if origin is None:  # not a browser: operator tools authenticate with the token alone
        return True
    if origin in allowed:
        return True
    host = ws.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def browser_endpoint(ws: WebSocket) -> None:
    controller: Controller = ws.app.state.controller
    if JSON_SUBPROTOCOL not in (ws.scope.get("subprotocols") or []):
        await ws.accept()
        await ws.close(4426, f"offer sub-protocol {JSON_SUBPROTOCOL}")
        return
    await ws.accept(subprotocol=JSON_SUBPROTOCOL)
    if not _origin_allowed(ws, controller.config.allowed_origins):
        await ws.close(4403, "origin not allowed")
        return
    sub = Subscriber(max_queue=controller.config.ws_max_queue,
                     max_bytes=controller.config.ws_max_queue_bytes)
    sending = asyncio.Lock()  # held by the pusher per event and by a snapshot while sent
    try:
        role = await _hello(ws, controller)
        await _send(ws, Frame(t="welcome", b={"role": role}))
        async with asyncio.TaskGroup() as tg:
            pusher = tg.create_task(_push(ws, sub, sending), name="ws-push")
            try:
                await _read(ws, controller, sub, sending)
            finally:
                pusher.cancel()
        code, reason = 1000, "bye"
    except* _Close as group:
        first = group.exceptions[0]
        code, reason = (first.code, first.reason) if isinstance(first, _Close) else (1011, "")
    except* (OSError, RuntimeError):
        code, reason = 1006, "connection lost"
    finally:
        controller.hub.unsubscribe(sub)
    if ws.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            await ws.close(code, reason)


async def _send(ws: WebSocket, frame: Frame) -> None:
    """Send one frame. Raises LocalProtocolError, before anything is sent, for a frame that
    cannot be encoded (the caller decides whether to skip it)."""
    text = encode_json(frame)
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await ws.send_text(text)
    except TimeoutError:
        raise _Close(4408, "client is not reading") from None


async def _receive(ws: WebSocket, timeout_s: float, max_bytes: int) -> Frame | None:
    try:
        async with asyncio.timeout(timeout_s):
            msg = await ws.receive()
    except TimeoutError:
        raise _Close(4408, f"nothing received for {timeout_s:g} s") from None
    if msg["type"] == "websocket.disconnect":
        return None
    text = msg.get("text")
    if text is None:
        raise _Close(4400, f"binary frames are not allowed on {JSON_SUBPROTOCOL}")
    try:
        return decode_json(text, max_frame_bytes=max_bytes)
    except FrameTooLarge as exc:
        raise _Close(1009, exc.message) from None
    except BadFrame as exc:
        raise _Close(4400, exc.message) from None


async def _hello(ws: WebSocket, controller: Controller) -> str:
    frame = await _receive(ws, HELLO_TIMEOUT_S, controller.config.max_frame_bytes)
    if frame is None:
        raise _Close(1000, "closed before hello")
    if frame.t != "hello":
        raise _Close(4400, f"expected hello first, got {frame.t!r}")
    token = frame.b.get("token")
    role = await controller.store.operator_role(token) if isinstance(token, str) else None
    if role is None:
        raise _Close(4401, "operator token is not valid")
    return role


async def _read(ws: WebSocket, controller: Controller, sub: Subscriber,
                sending: asyncio.Lock) -> None:
    while True:
        frame = await _receive(ws, IDLE_TIMEOUT_S, controller.config.max_frame_bytes)
        if frame is None:
            return
        if frame.t == "subscribe":
            topics = frame.b.get("topics")
            if not isinstance(topics, list) or not all(
                    isinstance(t, str) and (t == "nodes" or t.startswith(TOPIC_PREFIXES))
                    for t in topics) or len(sub.topics) + len(topics) > MAX_TOPICS:
                await _send(ws, Frame(t="error", re=frame.id, b={
                    "code": "bad_frame",
                    "message": "topics must be a list of 'nodes', 'node:<id>', "
                               "'command:<id>', 'commands:<node_id>', 'logs:<id>' or "
                               "'monitor:<id>'"}))
                continue
            async with sending:  # events queue up meanwhile and follow the snapshots
                controller.hub.subscribe(sub, topics)
                for topic in topics:
                    await _send(ws, Frame(t="snapshot", re=frame.id, b={
                        "topic": topic, "data": await _snapshot(controller, topic)}))
                await _send(ws, Frame(t="subscribed", re=frame.id,
                                      b={"topics": sorted(sub.topics)}))
        elif frame.t == "ping":
            await _send(ws, Frame(t="pong", re=frame.id))
        else:
            await _send(ws, Frame(t="error", re=frame.id, b={
                "code": "unknown_type", "message": f"frame type {frame.t!r} is not handled"}))


async def _push(ws: WebSocket, sub: Subscriber, sending: asyncio.Lock) -> None:
    while True:
        event = await sub.get()
        if event is None:
            raise _Close(4429, "event queue overflowed: client too slow; reconnect and "
                               "resubscribe")
        async with sending:
            try:
                await _send(ws, Frame(t="event", b={"topic": event.topic, "kind": event.kind,
                                                    "data": event.data,
                                                    "at_ms": round(event.at_ms, 3)}))
            except LocalProtocolError as exc:  # one bad event must not cost the subscriber
                global unencodable_total
                unencodable_total += 1
                logger.warning("event skipped: it cannot be sent on /ws", extra={
                    "topic": event.topic, "kind": event.kind, "detail": exc.message[:200]})


async def _snapshot(controller: Controller, topic: str) -> Any:
    """The current state behind ``topic``; None for something that does not exist."""
    store = controller.store
    kind, _, key = topic.partition(":")
    try:
        if topic == "nodes":
            return [controller.node_view(r) for r in await store.list_nodes()]
        if kind == "node":
            row = await store.get_node(key)
            return None if row is None else controller.node_view(row)
        if kind == "command":
            return command_view(await store.get_command(key))
        if kind == "commands":
            rows, counts = await store.list_commands(node_id=key, state=None, limit=100)
            return {"items": [command_view(r) for r in rows], "counts": counts}
        if kind == "logs":
            return {"items": [log_item(r) for r in await store.command_logs(key)]}
        if kind == "monitor":
            return {"topics": controller.monitor.get(key)}
    except NotFound:
        return None
    return None

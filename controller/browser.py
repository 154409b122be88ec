"""The browser and operator stream on ``/ws`` (PROTOCOL.md §9, JSON sub-protocol).

Client: ``hello`` {token} -> ``welcome`` {role}; then ``subscribe`` {topics} -> one
``snapshot`` {topic, data} per topic, then ``subscribed``; then the server pushes ``event``
frames {topic, kind, data}. Rule: a topic's snapshot is sent before any of its events, and
events that happened while it was built follow it (a client may see a change twice, never
miss one), so a client that reconnects resyncs by subscribing again. A client whose
bounded event queue overflows, or that does not take a frame within ``SEND_TIMEOUT_S``, is
closed with 4429 (it reconnects and resubscribes) so it never slows the controller.
Origin: browsers (which send ``Origin``) must be same-origin or allow-listed.

Bounds: a topic is at most ``MAX_TOPIC_CHARS`` characters and its id part must be a valid
node or command id; a client holds at most ``MAX_TOPICS`` topics. A snapshot is paged: each
``snapshot`` frame holds at most ``SNAPSHOT_PAGE_ITEMS`` items and about
``SNAPSHOT_PAGE_BYTES`` (one item always fits), carries ``page`` (0, 1, ...) and ``more``
(true on every page of the topic but its last); an item too large for any frame is left
out and counted in ``omitted``. docs/protocol.md §9 says how a client merges pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from tether.protocol.codec import JSON_SUBPROTOCOL, MAX_FRAME_BYTES, encode_json
from tether.protocol.errors import (
    CloseCode,
    LocalProtocolError,
    NotFound,
    close_reason,
)
from tether.protocol.frames import Frame, valid_node_id

from .config import ControllerConfig
from .domain.roles import Caller, role_at_least
from .jsonws import WsClose, receive_json
from .services.bus import EventBus
from .services.commands import CommandService
from .services.events import Event, Subscriber, data_size
from .services.jobs import JobService, job_view
from .services.metrics import WsCounters, code_label
from .services.nodes import NodeViews
from .services.peek import Peeks
from .services.rollouts import RolloutService, rollout_view
from .services.rtc import MAX_REFUSED_RUN, SIGNAL_TYPES, RtcService, client_topic
from .services.rtc_state import ClientPeers
from .services.tokenwatch import until_token_invalid
from .views import command_view, log_item
from .wsproto import FRAME_MESSAGE, FrameWriter, frame_text, frame_writer, text_frame

if TYPE_CHECKING:
    from .store.controller_store import ControllerStore

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
# Frames any role may send; every other frame changes something and needs ``operator``
# (deny by default: a frame type added later is guarded until it is listed here).
READ_ONLY_FRAMES = frozenset({"subscribe", "ping"})
IDLE_TIMEOUT_S = 300.0
SEND_TIMEOUT_S = 10.0
MAX_TOPICS = 256  # per client, and per subscribe frame
RTC_MAX_QUEUE = 256  # rtc frames from nodes awaiting an operator's socket (SDPs: 64 KiB)
RTC_MAX_QUEUE_BYTES = 4 << 20
MAX_TOPIC_CHARS = 160
SNAPSHOT_PAGE_ITEMS = 500
SNAPSHOT_PAGE_BYTES = 256 << 10  # items' compact JSON size per snapshot frame
MAX_SNAPSHOT_ITEM_BYTES = MAX_FRAME_BYTES - (16 << 10)  # larger: left out, counted
NODE_TOPICS = ("node", "commands", "monitor")  # <kind>:<node_id>
COMMAND_TOPICS = ("command", "logs", "job", "rollout")  # <kind>:<command/job/rollout id>
COMMAND_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
TOPICS_HELP = ("topics must be a list of at most 256 of 'nodes', 'node:<id>', "
               "'command:<id>', 'commands:<node_id>', 'logs:<id>', 'monitor:<id>', "
               "'jobs', 'job:<id>', 'rollouts' or 'rollout:<id>'")


def topic_error(topic: object) -> str | None:
    """None when ``topic`` is one this server serves; otherwise why not (pure)."""
    if not isinstance(topic, str):
        return f"a topic must be text, not {type(topic).__name__}"
    if len(topic) > MAX_TOPIC_CHARS:
        return f"a topic is at most {MAX_TOPIC_CHARS} characters, got {len(topic)}"
    if topic in ("nodes", "jobs", "rollouts"):
        return None
    kind, sep, key = topic.partition(":")
    if sep and kind in NODE_TOPICS and valid_node_id(key):
        return None
    if sep and kind in COMMAND_TOPICS and COMMAND_ID_RE.fullmatch(key):
        return None
    return f"topic {topic[:80]!r} is not known"


@dataclass(frozen=True, slots=True, eq=False)
class BrowserServices:
    """What ``/ws`` uses, built once by app.py (``app.state.browser``): the store for
    operator tokens and nodes, ``commands`` for commands and their output, ``bus`` for
    every event a client sees."""

    store: ControllerStore
    commands: CommandService
    nodes: NodeViews
    bus: EventBus
    peeks: Peeks  # a node's live session and monitor packets from the replica holding it
    config: ControllerConfig
    jobs: JobService | None = None  # the 'jobs' and 'job:<id>' topics (services/jobs.py)
    counters: WsCounters = field(default_factory=WsCounters)  # for /metrics
    rtc: RtcService | None = None  # rtc.* signalling to nodes (services/rtc.py)
    # the 'rollouts' and 'rollout:<id>' topics (services/rollouts.py)
    rollouts: RolloutService | None = None


def _origin_allowed(ws: WebSocket, allowed: tuple[str, ...]) -> bool:
    origin = ws.headers.get("origin")
    if origin is None:  # not a browser: operator tools authenticate with the token alone
        return True
    if origin in allowed:
        return True
    host = ws.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def browser_endpoint(ws: WebSocket) -> None:
    controller: BrowserServices = ws.app.state.browser
    if JSON_SUBPROTOCOL not in (ws.scope.get("subprotocols") or []):
        await ws.accept()
        await ws.close(CloseCode.UNSUPPORTED_PROTOCOL, f"offer sub-protocol {JSON_SUBPROTOCOL}")
        return
    await ws.accept(subprotocol=JSON_SUBPROTOCOL)
    if not _origin_allowed(ws, controller.config.allowed_origins):
        await ws.close(CloseCode.FORBIDDEN, "origin not allowed")
        controller.counters.closed[code_label(CloseCode.FORBIDDEN)] += 1
        return
    sub = Subscriber(max_queue=controller.config.ws_max_queue,
                     max_bytes=controller.config.ws_max_queue_bytes)
    sending = asyncio.Lock()  # held by the pusher per event and by a snapshot while sent
    writer = frame_writer(ws.scope)
    if writer is not None:
        sub.direct = _deliver_now(writer, sending)
    controller.counters.clients += 1
    peers: ClientPeers | None = None  # an operator's rtc peers, and its address
    rtc_sub = Subscriber(max_queue=RTC_MAX_QUEUE, max_bytes=RTC_MAX_QUEUE_BYTES)
    try:
        caller, token = await _hello(ws, controller)
        await _send(ws, Frame(t="welcome", b={"role": caller.role}))
        async with asyncio.TaskGroup() as tg:
            pusher = tg.create_task(_push(ws, controller.bus, sub, sending), name="ws-push")
            recheck = tg.create_task(_recheck_token(controller, token), name="ws-token")
            rtc_pusher = None
            if controller.rtc is not None and role_at_least(caller.role, "operator"):
                peers = controller.rtc.open_client()
                rtc_pusher = tg.create_task(_push_rtc(ws, controller.rtc, peers, rtc_sub,
                                                      sending), name="ws-rtc-push")
            try:
                await _read(ws, controller, sub, sending, caller, peers, rtc_sub)
            finally:
                pusher.cancel()
                recheck.cancel()
                if rtc_pusher is not None:
                    rtc_pusher.cancel()
        code, reason = CloseCode.NORMAL_CLOSURE, "bye"
    except* WsClose as group:
        first = group.exceptions[0]
        code, reason = ((first.code, first.reason) if isinstance(first, WsClose)
                        else (CloseCode.INTERNAL_ERROR, ""))
    except* (OSError, RuntimeError, WebSocketDisconnect):  # the client went away mid-send
        code, reason = CloseCode.CONNECTION_LOST, "connection lost"
    finally:
        controller.bus.unsubscribe(sub)
        controller.bus.unsubscribe(rtc_sub)
        controller.counters.clients -= 1
        if peers is not None and peers.peers and controller.rtc is not None:
            # the nodes hear that the client is gone (bounded: a router send times out)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await controller.rtc.client_gone(peers)
    controller.counters.closed[code_label(code)] += 1
    if ws.application_state != WebSocketState.DISCONNECTED:
        # Bounded: a client that does not read would hold the close (and this task) forever.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await ws.close(code, close_reason(reason))


async def _send(ws: WebSocket, frame: Frame) -> None:
    """Send one frame. Raises LocalProtocolError, before anything is sent, for a frame that
    cannot be encoded (the caller decides whether to skip it)."""
    text = encode_json(frame)
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await ws.send_text(text)
    except TimeoutError:  # a client that does not read is too slow (§9): 4429
        raise WsClose(CloseCode.RATE_LIMITED,
                     "client is not reading: too slow; reconnect and resubscribe") from None


async def _send_frame(ws: WebSocket, frame: bytes) -> None:
    """Send one WebSocket frame built by :func:`text_frame` (shared by every subscriber of
    an event), straight to the server when it takes whole frames, else as its text."""
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            if frame_writer(ws.scope) and ws.application_state == WebSocketState.CONNECTED:
                try:
                    await ws._send({"type": FRAME_MESSAGE, "frame": frame})
                except OSError:
                    raise WebSocketDisconnect(code=1006) from None
            else:
                await ws.send_text(frame_text(frame))
    except TimeoutError:  # a client that does not read is too slow (§9): 4429
        raise WsClose(CloseCode.RATE_LIMITED,
                     "client is not reading: too slow; reconnect and resubscribe") from None


async def _hello(ws: WebSocket, controller: BrowserServices) -> tuple[Caller, str]:
    """The caller and its token. Every valid token may subscribe (``viewer`` and up);
    a frame that changes anything must check ``role_at_least(caller.role, ...)``."""
    frame = await receive_json(ws, HELLO_TIMEOUT_S, controller.config.max_frame_bytes)
    if frame is None:
        raise WsClose(CloseCode.NORMAL_CLOSURE, "closed before hello")
    if frame.t != "hello":
        raise WsClose(CloseCode.PROTOCOL_ERROR, f"expected hello first, got {frame.t!r}")
    token = frame.b.get("token")
    caller, why = (await controller.store.operator_caller(token) if isinstance(token, str)
                   else (None, "not text"))
    if caller is None:
        raise WsClose(CloseCode.AUTH_FAILED, f"operator token is not valid ({why})")
    return caller, token


async def _recheck_token(controller: BrowserServices, token: str) -> None:
    """Close the client with 4401 once its token is revoked or expires
    (services/tokenwatch.py: within ``TOKEN_RECHECK_S``, as the shell sockets)."""
    why = await until_token_invalid(controller.store, token)
    raise WsClose(CloseCode.AUTH_FAILED, f"operator token is no longer valid ({why})")


async def _read(ws: WebSocket, controller: BrowserServices, sub: Subscriber,
                sending: asyncio.Lock, caller: Caller, peers: ClientPeers | None = None,
                rtc_sub: Subscriber | None = None) -> None:
    while True:
        frame = await receive_json(ws, IDLE_TIMEOUT_S, controller.config.max_frame_bytes)
        if frame is None:
            return
        if frame.t not in READ_ONLY_FRAMES and not role_at_least(caller.role, "operator"):
            await _send(ws, Frame(t="error", re=frame.id, b={
                "code": "forbidden", "message": f"{frame.t[:40]!r} needs the 'operator' "
                f"role or above; this token is {caller.role!r}"}))
            continue
        if frame.t == "subscribe":
            topics = frame.b.get("topics")
            error = _subscribe_error(topics, sub.topics)
            if error is not None:
                await _send(ws, Frame(t="error", re=frame.id, b={
                    "code": error[0], "message": error[1]}))
                continue
            assert isinstance(topics, list)
            async with sending:  # events queue up meanwhile and follow the snapshots
                controller.bus.subscribe(sub, topics)
                for topic in topics:
                    await _send_snapshot(ws, controller, topic, frame.id)
                await _send(ws, Frame(t="subscribed", re=frame.id,
                                      b={"topics": sorted(sub.topics)}))
        elif frame.t == "ping":
            await _send(ws, Frame(t="pong", re=frame.id))
        elif frame.t in SIGNAL_TYPES and controller.rtc is not None and peers is not None:
            if rtc_sub is not None and not rtc_sub.topics:  # from its first rtc frame on
                controller.bus.subscribe(rtc_sub, [client_topic(peers.address)])
            refusal = await controller.rtc.from_client(peers, frame)
            if refusal is not None:
                if peers.refused_run >= MAX_REFUSED_RUN:
                    raise WsClose(CloseCode.RATE_LIMITED, "rtc signalling flood: slow down")
                await _send(ws, Frame(t="error", re=frame.id, b={
                    "code": refusal[0], "message": refusal[1]}))
        else:
            await _send(ws, Frame(t="error", re=frame.id, b={
                "code": "unknown_type", "message": f"frame type {frame.t!r} is not handled"}))


def _event_wire(event: Event) -> bytes:
    """The event's /ws frame, built by the first subscriber that sends it and shared by
    the rest. Raises LocalProtocolError for an event that cannot be a frame."""
    if event.wire is None:
        event.wire = text_frame(encode_json(Frame(t="event", b={
            "topic": event.topic, "kind": event.kind, "data": event.data,
            "at_ms": round(event.at_ms, 3)})))
    return event.wire


def _deliver_now(writer: FrameWriter, sending: asyncio.Lock) -> Callable[[Event], bool]:
    """The subscriber's fast path (``Subscriber.direct``): the publisher writes the event
    to the client at once while nothing else is being sent on the connection (``sending``
    free: no snapshot or earlier event in progress, so the order holds) and its transport
    takes more; otherwise False and the event is queued for the pusher, which also owns
    the unencodable case."""
    def deliver(event: Event) -> bool:
        if sending.locked():
            return False
        try:
            return writer.write_frame(_event_wire(event))
        except Exception:  # never the publisher's problem: queue it instead
            return False
    return deliver


async def _push_rtc(ws: WebSocket, rtc: RtcService, peers: ClientPeers, sub: Subscriber,
                    sending: asyncio.Lock) -> None:
    """The client's rtc frames from nodes (its own bus topic), as ``rtc.*`` frames: the
    answer to an offer comes back as ``rtc.answer`` with the same ids. Overflow closes the
    client with 4429, as for events."""
    while True:
        event = await sub.get()
        if event is None:
            raise WsClose(CloseCode.RATE_LIMITED,
                         "rtc queue overflowed: client too slow; reconnect")
        frame = rtc.to_client(peers, event)
        if frame is not None:
            async with sending:
                await _send(ws, frame)


async def _push(ws: WebSocket, bus: EventBus, sub: Subscriber, sending: asyncio.Lock
                ) -> None:
    while True:
        event = await sub.get()
        if event is None:
            raise WsClose(CloseCode.RATE_LIMITED,
                         "event queue overflowed: client too slow; reconnect and resubscribe")
        async with sending:
            try:
                wire = _event_wire(event)
            except LocalProtocolError as exc:  # one bad event must not cost the subscriber
                bus.count_unencodable()
                logger.warning("event skipped: it cannot be sent on /ws", extra={
                    "topic": event.topic, "kind": event.kind, "detail": exc.message[:200]})
                continue
            await _send_frame(ws, wire)


def _subscribe_error(topics: object, held: set[str]) -> tuple[str, str] | None:
    """(code, message) for a ``subscribe`` body to refuse, or None. The count is checked
    before any topic is looked at, so a huge list costs nothing."""
    if not isinstance(topics, list):
        return "bad_frame", TOPICS_HELP
    if len(topics) > MAX_TOPICS:
        return "too_many_topics", f"{len(topics)} topics in one subscribe; {TOPICS_HELP}"
    for topic in topics:
        why = topic_error(topic)
        if why is not None:
            return "bad_topic", f"{why}; {TOPICS_HELP}"
    if len(held | set(topics)) > MAX_TOPICS:
        return "too_many_topics", f"a client holds at most {MAX_TOPICS} topics"
    return None


_END = object()


async def _send_snapshot(ws: WebSocket, controller: BrowserServices, topic: str,
                         re_id: str | None) -> None:
    """Send ``topic``'s snapshot as pages (module docstring); one page is read ahead so
    each frame can say whether more follow."""
    pages = _snapshot_pages(controller, topic)
    try:
        page: Any = await anext(pages)
        number = 0
        while True:
            following = await anext(pages, _END)
            data, omitted = page
            body = {"topic": topic, "data": data, "page": number,
                    "more": following is not _END}
            if omitted:
                body["omitted"] = omitted
            await _send(ws, Frame(t="snapshot", re=re_id, b=body))
            if following is _END:
                return
            page, number = following, number + 1
    finally:
        await pages.aclose()


def _split(items: Iterable[Any]) -> Iterator[tuple[list[Any], int]]:
    """Items in pages of at most SNAPSHOT_PAGE_ITEMS and about SNAPSHOT_PAGE_BYTES (one
    item always fits), each with how many items too large for a frame were left out.
    Yields at least one (maybe empty) page."""
    page: list[Any] = []
    size = omitted = 0
    for item in items:
        n = data_size(item)
        if n > MAX_SNAPSHOT_ITEM_BYTES:
            omitted += 1
            continue
        if page and (len(page) >= SNAPSHOT_PAGE_ITEMS or size + n > SNAPSHOT_PAGE_BYTES):
            yield page, omitted
            page, size, omitted = [], 0, 0
        page.append(item)
        size += n
    yield page, omitted


async def _snapshot_pages(controller: BrowserServices, topic: str
                          ) -> AsyncIterator[tuple[Any, int]]:
    """The current state behind ``topic`` as (data, omitted) pages; one page with data
    None for something that does not exist. Pages of a list topic hold a part of the list
    in the topic's usual shape."""
    store, commands = controller.store, controller.commands
    kind, _, key = topic.partition(":")
    try:
        if topic == "nodes":
            rows = await store.list_nodes()
            for part, omitted in _split(controller.nodes.view(r) for r in rows):
                yield part, omitted
        elif kind in ("node", "command"):
            if kind == "node":
                row = await store.get_node(key)
                one = None if row is None else await controller.nodes.view_one(row)
            else:
                one = command_view(await commands.get(key))
            too_large = data_size(one) > MAX_SNAPSHOT_ITEM_BYTES
            yield (None, 1) if too_large else (one, 0)
        elif topic == "jobs" and controller.jobs is not None:
            jobs = await controller.jobs.list_jobs(limit=100)
            for part, omitted in _split(job_view(j, with_nodes=False) for j in jobs):
                yield {"items": part}, omitted
        elif kind == "job" and controller.jobs is not None:
            one = job_view(await controller.jobs.get(key))
            too_large = data_size(one) > MAX_SNAPSHOT_ITEM_BYTES
            yield (None, 1) if too_large else (one, 0)
        elif topic == "rollouts" and controller.rollouts is not None:
            listed = await controller.rollouts.list_rollouts(limit=100)
            for part, omitted in _split(rollout_view(r, with_nodes=False) for r in listed):
                yield {"items": part}, omitted
        elif kind == "rollout" and controller.rollouts is not None:
            one = await controller.rollouts.get_view(key)
            too_large = data_size(one) > MAX_SNAPSHOT_ITEM_BYTES
            yield (None, 1) if too_large else (one, 0)
        elif kind == "commands":
            rows, counts = await commands.list_commands(node_id=key, state=None, limit=100)
            for part, omitted in _split(command_view(r) for r in rows):
                yield {"items": part, "counts": counts}, omitted
        elif kind == "logs":
            after, first = 0, True
            while True:  # read from the store a page at a time
                chunks = await commands.logs(key, after=after, limit=SNAPSHOT_PAGE_ITEMS,
                                             max_bytes=SNAPSHOT_PAGE_BYTES, must_exist=False)
                if chunks or first:
                    for part, omitted in _split(log_item(r) for r in chunks):
                        if part or omitted or first:
                            yield {"items": part}, omitted
                        first = False
                if not chunks:
                    return
                after = chunks[-1].id
        elif kind == "monitor":
            topics, cut = await controller.peeks.monitor(key)
            packets = [(name, p) for name, ring in topics.items() for p in ring]
            for part, omitted in _split(packets):
                grouped: dict[str, list[Any]] = {}
                for name, p in part:
                    grouped.setdefault(name, []).append(p)
                yield {"topics": grouped}, omitted + cut  # the holder's cut: left out too
                cut = 0
        else:
            yield None, 0
    except NotFound:
        yield None, 0

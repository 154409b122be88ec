"""The controller's one NATS connection, shared by the NATS router and the NATS event bus.

Contract:

* :meth:`NatsLink.start` connects within ``connect_timeout_s`` or raises
  :class:`NatsUnavailable` (a wrong URL fails the start, it does not hang it). After that the
  connection reconnects forever, waiting between attempts by full-jitter exponential backoff
  (protocol/backoff.py); nats-py re-sends every live subscription on each reconnect.
* Synchronous callers publish through :meth:`NatsLink.publish_nowait`, which never blocks and
  never raises: it queues the message for the link's one pump task and says whether it was
  taken. Overflow policy: while disconnected, or when the queue is full (``max_queued``
  messages or ``max_queued_bytes``), the new message is refused and counted
  (``dropped_total``); what was queued is kept. One pump task publishes in queue order, so
  the messages of one replica reach NATS in the order they were offered (NATS keeps the
  order of one connection per subject).
* Every nats-py callback here only counts and sets flags: nats-py awaits them on its reading
  and reconnecting paths. Work a reconnect calls for (replaying nudges, for one) runs in the
  listeners given to :meth:`on_reconnect`, each from the pump task, bounded by
  ``callback_timeout_s`` and isolated from the others.
* :meth:`NatsLink.close` stops the pump and drains the connection (pending subscriptions
  handled, queued publishes flushed) within ``drain_timeout_s``, then closes it.

Connections are made with ``no_echo``: a replica never receives what it published itself, so
each replica delivers its own events locally exactly once (nats_bus.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import SlowConsumerError

from tether.common.tasks import cancel_and_wait
from tether.protocol.backoff import backoff_delays

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "tether"

_TOKEN_SAFE = re.compile(r"[A-Za-z0-9_:-]+")
_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_:-]")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")
MAX_TOKEN_LEN = 512  # characters of one encoded subject token


class NatsUnavailable(Exception):
    """The first connection to NATS could not be made; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def subject_token(text: str) -> str:
    """``text`` as one NATS subject token: ``[A-Za-z0-9_:-]`` kept, every other UTF-8 byte
    (``.``, ``*``, ``>``, whitespace, ``%`` itself, non-ASCII) written ``%XX``. Reversible
    (:func:`token_text`); an empty text is ``%``. Node ids (``[a-z0-9][a-z0-9-]*``) and the
    topics the controller publishes (``node:<id>``, ``command:<id>``) pass unchanged."""
    if _TOKEN_SAFE.fullmatch(text):
        return text
    if not text:
        return "%"
    return _TOKEN_UNSAFE.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
        text)


def token_text(token: str) -> str | None:
    """The text :func:`subject_token` encoded as ``token``, or None when ``token`` is not such
    an encoding (a hostile publisher's subject)."""
    if _TOKEN_SAFE.fullmatch(token):
        return token
    if token == "%":
        return ""
    if len(token) > MAX_TOKEN_LEN or not _TOKEN_SAFE.fullmatch(_ESCAPED.sub("", token) or "x"):
        return None
    try:
        raw = re.sub(r"[A-Za-z0-9_:-]+|%[0-9A-F]{2}", _raw_piece, token)
        text = bytes.fromhex(raw).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return text if subject_token(text) == token else None  # one encoding per text


def _raw_piece(m: re.Match[str]) -> str:
    piece = m.group()
    return piece[1:] if piece[0] == "%" else piece.encode().hex()


def new_replica_id() -> str:
    """A replica id for a process that was given none: ``r-`` and 12 hex digits."""
    return f"r-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class LinkStats:
    """Counters for diag and /metrics."""

    connected: bool
    disconnects_total: int
    reconnects_total: int
    published_total: int
    dropped_total: int  # refused by publish_nowait, or failed in the pump
    queued: int
    slow_consumer_total: int  # inbound messages nats-py dropped: a subscription fell behind
    errors_total: int


ReconnectListener = Callable[[], Awaitable[None]]


class NatsLink:
    """One NATS connection for the controller (module docstring for the contract)."""

    def __init__(self, servers: str | list[str], *, replica_id: str,
                 prefix: str = DEFAULT_PREFIX, connect_timeout_s: float = 5.0,
                 reconnect_base_s: float = 0.25, reconnect_cap_s: float = 5.0,
                 ping_interval_s: float = 10.0, max_outstanding_pings: int = 2,
                 publish_timeout_s: float = 2.0, callback_timeout_s: float = 10.0,
                 drain_timeout_s: float = 5.0, max_queued: int = 8192,
                 max_queued_bytes: int = 16 << 20, pending_size: int = 8 << 20,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        if not prefix or subject_token(prefix) != prefix:
            raise ValueError(f"prefix {prefix!r} must be one subject token ([A-Za-z0-9_:-]+)")
        self.servers = servers
        self.replica_id = replica_id
        self.prefix = prefix
        self.connect_timeout_s = connect_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.callback_timeout_s = callback_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self._ping_interval_s = ping_interval_s
        self._max_outstanding_pings = max_outstanding_pings
        self._pending_size = pending_size
        self._reconnect_base_s = reconnect_base_s
        self._reconnect_cap_s = reconnect_cap_s
        self._uniform = uniform
        self._delays: Iterator[float] = self._new_delays()
        self.nc: Client = Client()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._reconnected = False  # set by the callback, acted on by the pump
        self._listeners: list[ReconnectListener] = []
        self._pump: asyncio.Task[None] | None = None
        self._closing = False
        self.disconnects_total = 0
        self.reconnects_total = 0
        self.published_total = 0
        self.dropped_total = 0
        self.slow_consumer_total = 0
        self.errors_total = 0

    def _new_delays(self) -> Iterator[float]:
        return backoff_delays(self._uniform, base_s=self._reconnect_base_s,
                              cap_s=self._reconnect_cap_s)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (bounded by ``connect_timeout_s``) and start the pump. Raises
        NatsUnavailable when no connection could be made in time."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self.nc.connect(
                    self.servers, name=f"tether-controller {self.replica_id}",
                    error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    reconnect_to_server_handler=self._next_server,
                    allow_reconnect=True, max_reconnect_attempts=-1,
                    connect_timeout=self.connect_timeout_s,  # type: ignore[arg-type]
                    ping_interval=self._ping_interval_s,  # type: ignore[arg-type]
                    max_outstanding_pings=self._max_outstanding_pings,
                    drain_timeout=self.drain_timeout_s,  # type: ignore[arg-type]
                    pending_size=self._pending_size, no_echo=True)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await self.nc.close()
            raise NatsUnavailable(f"cannot connect to NATS at {self.servers} within "
                                  f"{self.connect_timeout_s:g} s: {type(exc).__name__}") from None
        self._pump = asyncio.create_task(self._pump_run(), name="nats-pump")
        logger.info("nats connected", extra={"replica_id": self.replica_id,
                                             "server": self._server()})

    async def close(self) -> None:
        """Stop the pump (what it still held is flushed first when connected), then drain and
        close the connection, each bounded. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._pump is not None:
            self._wake.set()  # the pump publishes what is queued, then returns
            try:
                async with asyncio.timeout(self.publish_timeout_s):
                    await self._pump
            except TimeoutError:  # what was left is dropped
                self.dropped_total += len(self._queue)
            except Exception:  # the pump's own failure, logged once here by its owner
                logger.exception("nats pump failed")
            if not self._pump.done():
                await cancel_and_wait(self._pump)
            self._pump = None
        if self.nc.is_connected:
            try:
                async with asyncio.timeout(self.drain_timeout_s + 1):
                    await self.nc.drain()
            except Exception:  # a drain that fails still ends in close() below
                logger.warning("nats drain failed; closing", exc_info=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.drain_timeout_s):
                await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    def on_reconnect(self, listener: ReconnectListener) -> None:
        """Call ``listener`` (from the pump, bounded by ``callback_timeout_s``) after each
        reconnection, once nats-py has re-sent the subscriptions."""
        self._listeners.append(listener)

    # -- publishing -----------------------------------------------------------------------

    def publish_nowait(self, subject: str, payload: bytes) -> bool:
        """Queue ``payload`` for ``subject``; False (counted) when refused: disconnected, or
        the queue is full. Never blocks, never raises."""
        if self._closing or not self.nc.is_connected or len(self._queue) >= self.max_queued \
                or (self._queue and self._queued_bytes + len(payload) > self.max_queued_bytes):
            self.dropped_total += 1
            return False
        self._queue.append((subject, payload))
        self._queued_bytes += len(payload)
        self._wake.set()
        return True

    async def _pump_run(self) -> None:
        """Publish the queue in order; run the reconnect listeners after a reconnection;
        return once :meth:`close` began and the queue is empty."""
        while not self._closing or self._queue:
            await self._wake.wait()
            self._wake.clear()
            if self._reconnected:
                self._reconnected = False
                await self._run_listeners()
            while self._queue:
                subject, payload = self._queue.popleft()
                self._queued_bytes -= len(payload)
                try:
                    async with asyncio.timeout(self.publish_timeout_s):
                        await self.nc.publish(subject, payload)
                except (TimeoutError, nats.errors.Error) as exc:
                    self.dropped_total += 1
                    logger.debug("nats publish dropped", extra={"subject": subject,
                                                                "detail": type(exc).__name__})
                else:
                    self.published_total += 1
            if self._closing:
                return

    async def _run_listeners(self) -> None:
        for listener in self._listeners:
            try:
                async with asyncio.timeout(self.callback_timeout_s):
                    await listener()
            except Exception:  # one listener's failure must not stop the others or the pump
                logger.exception("nats reconnect listener failed")

    # -- nats-py callbacks: count and flag only (they run on nats-py's own paths) ---------

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            self.slow_consumer_total += 1
            return
        self.errors_total += 1
        logger.info("nats connection error", extra={"detail": f"{type(exc).__name__}: {exc}"[:200]})

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        self.disconnects_total += 1
        logger.warning("nats disconnected; reconnecting", extra={"replica_id": self.replica_id})

    async def _on_reconnected(self) -> None:
        self.reconnects_total += 1
        self._delays = self._new_delays()
        self._reconnected = True
        self._wake.set()
        logger.info("nats reconnected", extra={"replica_id": self.replica_id,
                                               "server": self._server()})

    def _server(self) -> str:
        """host:port of the server connected to (never the URL: it may hold credentials)."""
        url = self.nc.connected_url
        return "" if url is None else f"{url.hostname}:{url.port}"

    def _next_server(self, servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        """nats-py's reconnect hook: its choice of server, after our backoff delay."""
        return None, next(self._delays)

    def stats(self) -> LinkStats:
        return LinkStats(connected=self.nc.is_connected, disconnects_total=self.disconnects_total,
                         reconnects_total=self.reconnects_total,
                         published_total=self.published_total, dropped_total=self.dropped_total,
                         queued=len(self._queue), slow_consumer_total=self.slow_consumer_total,
                         errors_total=self.errors_total)

"""The node's end of one command's interactive io stream (exec stdin, a shell's pty).

The frames are class E (docs/protocol.md "Interactive io"); ``protocol/iostream.py`` makes
them an ordered, bounded stream. One :class:`IoChannel` per running command that has one;
the runtime routes ``io.*`` frames to it by ``command_id`` (frames for a command that has
none are dropped: they are late, or for a command that never had a stream).

Input (controller -> node): frames are applied in ``seq`` order exactly once. The inbox
holds at most ``window`` bytes plus one frame (the window this end announces in every
``io.ack``); a frame past that, a duplicate or a gap is dropped and the cursor acked again,
so the sender re-sends from there. The runner takes input with :meth:`IoChannel.next_input`
and acks it with :meth:`IoChannel.applied` once it was written to the process.

Output (node -> controller, shells only): :meth:`IoChannel.write_output` waits for room in
the peer's window (backpressure: the pty reader stops reading, the process blocks on its
terminal), so at most the window is in flight; unacked output is re-sent when acks stall.

Keepalive and lease: :meth:`IoChannel.run` (the runner owns its task) repeats this end's
``io.ack`` every ``KEEPALIVE_S``, so an idle stream stays known to be alive whatever sits
in between, and calls ``on_lease_lost`` once when nothing came from the controller side
for ``LEASE_S`` (the operator went away without a word: a shell is hung up, stdin closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from tether.protocol.errors import LocalProtocolError
from tether.protocol.frames import (
    MAX_IO_DATA,
    Body,
    Frame,
    IoAck,
    IoInput,
    IoOutput,
)
from tether.protocol.iostream import DEFAULT_WINDOW, KEEPALIVE_S, LEASE_S, IoSender

logger = logging.getLogger(__name__)

TICK_S = 0.5
ANSWER_S = 1.0


class IoChannel:
    """One command's stream (module docstring). ``send`` hands a frame to the link (False
    when there is no session: class E, the retransmit covers it)."""

    def __init__(self, command_id: str, send: Callable[[Frame], Awaitable[bool]], *,
                 window: int = DEFAULT_WINDOW, lease_s: float = LEASE_S,
                 keepalive_s: float = KEEPALIVE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.command_id = command_id
        self._send = send
        self.window = window
        self.lease_s = lease_s
        self.keepalive_s = keepalive_s
        self._clock = clock
        self.heard_at = clock()
        self._acked_at = -1e9
        self._answered_at = -1e9
        self.in_accepted = 0  # last input seq queued
        self.in_applied = 0  # last input seq written to the process
        self._inbox: deque[IoInput] = deque()
        self._inbox_bytes = 0
        self._inbox_wake = asyncio.Event()
        self.out = IoSender(window=0)  # no output until the controller side acks once
        self._room = asyncio.Event()
        self.on_lease_lost: Callable[[], None] | None = None
        self.dropped_total = 0

    # -- frames from the controller ------------------------------------------------------------

    async def receive(self, body: Body) -> None:
        """One parsed ``io.input`` or ``io.ack`` body for this command (``io.signal`` and
        ``io.resize`` go to the runner itself: a command without a stream takes them too)."""
        self.heard_at = self._clock()
        if isinstance(body, IoInput):
            await self._on_input(body)
        elif isinstance(body, IoAck):
            try:
                moved = self.out.on_ack(body.seq, body.window, self._clock())
            except LocalProtocolError as exc:
                self.dropped_total += 1
                logger.warning("io ack beyond what was sent", extra={
                    "command_id": self.command_id, "detail": exc.message})
                return
            self._room.set()
            if not moved and self._clock() - self._answered_at >= ANSWER_S:
                # an ack that acks nothing new is a hello or a keepalive from an end that
                # may have just attached: answer with this end's window (at most once per
                # ANSWER_S, so two ends never trade acks in a loop)
                self._answered_at = self._clock()
                await self.ack()
        else:
            self.dropped_total += 1  # io.output is node -> controller only

    async def _on_input(self, body: IoInput) -> None:
        if body.seq != self.in_accepted + 1 or \
                self._inbox_bytes + len(body.data) > self.window + MAX_IO_DATA:
            # a duplicate, a gap, or past the window: dropped; the ack tells the sender
            # where to go on from
            if body.seq > self.in_accepted:
                self.dropped_total += 1
            await self.ack()
            return
        self.in_accepted = body.seq
        self._inbox.append(body)
        self._inbox_bytes += len(body.data)
        self._inbox_wake.set()

    # -- the runner's side ---------------------------------------------------------------------

    async def next_input(self) -> IoInput:
        """The next input frame in order (waits for one)."""
        while not self._inbox:
            self._inbox_wake.clear()
            await self._inbox_wake.wait()
        item = self._inbox.popleft()
        self._inbox_bytes -= len(item.data)
        return item

    async def applied(self, seq: int) -> None:
        """Input up to ``seq`` reached the process: ack it (the sender's window opens)."""
        self.in_applied = max(self.in_applied, seq)
        await self.ack()

    async def ack(self) -> None:
        self._acked_at = self._clock()
        await self._send(IoAck(command_id=self.command_id, seq=self.in_applied,
                               window=self.window).frame())

    async def write_output(self, data: bytes) -> None:
        """Send ``data`` as ``io.output`` frames, each waiting for room in the peer's
        window (backpressure)."""
        view = memoryview(data)
        while view:
            room = self.out.room()
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            piece = bytes(view[:min(room, MAX_IO_DATA)])
            view = view[len(piece):]
            item = self.out.push(piece, self._clock())
            await self._send(IoOutput(command_id=self.command_id, seq=item.seq,
                                      data=piece).frame())

    async def flushed(self, timeout_s: float) -> bool:
        """Wait until all output was acked, at most ``timeout_s``; True if it was."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.out.unacked_bytes or self.out.unacked():
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Announce the window, then keepalives, output re-sends and the lease, until
        cancelled by the runner that owns the task."""
        await self.ack()
        lost = False
        while True:
            await asyncio.sleep(TICK_S)
            now = self._clock()
            if self.out.due(now):
                self.out.resent(now)
                for item in self.out.unacked():
                    await self._send(IoOutput(command_id=self.command_id, seq=item.seq,
                                              data=item.data).frame())
            if now - self._acked_at >= self.keepalive_s:
                await self.ack()
            if not lost and now - self.heard_at >= self.lease_s:
                lost = True
                logger.info("io stream lease lost", extra={"command_id": self.command_id})
                if self.on_lease_lost is not None:
                    self.on_lease_lost()

"""The ``file`` subflow: files in and out of a workspace over one message channel (an aiortc
data channel labelled ``file``, or later the controller's relay), with the wire format and
the state machines of :mod:`tether.protocol.filexfer` (docs/protocol.md "The `file` data
channel").

:func:`attach_file_channel` is the hook the peer runtime calls when a ``file`` channel
opens; it returns a :class:`FileEndpoint`. An endpoint is symmetric: it serves the peer's
uploads (``offer``) and downloads (``get``) when ``serve`` is true, and its own
:meth:`FileEndpoint.send_file` / :meth:`FileEndpoint.fetch` drive the other direction (what
``tether cp``, the bench and the tests call). The transport is a :class:`FileChannel`
(:mod:`.filechannel`); the blocking disk work is in :mod:`.filedisk`.

Invariants:
* one owner for every task: transfers started by the peer run in tasks the endpoint holds
  and cancels when the channel closes or on :meth:`FileEndpoint.close` (awaited by
  :meth:`FileEndpoint.aclose`);
  :meth:`send_file` and :meth:`fetch` run in the caller's task;
* bounded: at most ``max_transfers`` transfers per channel (both directions), each file at
  most ``max_file_bytes``; a sender has at most the accepted window unacknowledged and the
  channel's ``buffered_amount`` at most one chunk above ``buffered_low_bytes`` (the
  ``bufferedamountlow`` flow control of aiortc's file-transfer example); incoming chunks
  are written as they come (no queue);
* every wait (accept, ack, verdict, the channel draining, an incoming transfer's next
  message) has ``timeout_s``; a transfer that times out or whose channel closes fails and
  keeps its ``.part`` (unless it holds nothing), which the next offer of the same content
  resumes (its prefix is re-hashed);
* a received file appears under its name only after its sha256 matched: it is written to
  ``<name>.<sha256[:16]>.part`` (mode 0600, never through a symlink), fsynced, then
  renamed; a mismatch deletes the partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.protocol import filexfer as fx

from .filechannel import AiortcFileChannel, FileChannel
from .filedisk import commit, discard, hash_file, open_part

logger = logging.getLogger(__name__)

_HISTORY = 16


@dataclass(frozen=True, slots=True)
class FileLimits:
    """What one ``file`` channel may do (the node's settings; the defaults are the docs')."""

    max_file_bytes: int = 4 << 30
    max_transfers: int = 4
    chunk_bytes: int = fx.DEFAULT_CHUNK
    window_bytes: int = fx.DEFAULT_WINDOW
    # the channel's bufferedAmountLowThreshold: 0, as aiortc's file-transfer example leaves
    # it (aiortc hands a message to SCTP only once SCTP's own queue is empty, so a higher
    # threshold only queues more in front of it; measured: no faster, a little more CPU)
    buffered_low_bytes: int = 0
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.chunk_bytes <= fx.MAX_CHUNK:
            raise ValueError(f"chunk_bytes must be 1..{fx.MAX_CHUNK}")
        if not fx.MIN_WINDOW <= self.window_bytes <= fx.MAX_WINDOW:
            raise ValueError(f"window_bytes must be {fx.MIN_WINDOW}..{fx.MAX_WINDOW}")
        if self.max_transfers < 1 or self.max_file_bytes < 0 or self.timeout_s <= 0:
            raise ValueError("max_transfers >= 1, max_file_bytes >= 0, timeout_s > 0")


@dataclass(frozen=True, slots=True)
class TransferResult:
    """How one transfer ended. ``ok``: the file is in place with ``sha256``; otherwise
    ``error`` is the code (``sha256_mismatch`` for a refused verdict) and ``message`` says
    why. ``resumed_from``: the offset the receiver accepted; ``bytes``: what moved this
    time."""

    id: str
    name: str
    direction: str  # "in" (received here) or "out" (sent from here)
    size: int
    sha256: str
    ok: bool
    resumed_from: int = 0
    bytes: int = 0
    path: Path | None = None
    error: str | None = None
    message: str = ""


@dataclass(slots=True)
class _Incoming:
    offer: fx.Offer
    part: Path
    final: Path
    receiver: fx.Receiver | None = None
    fd: int = -1
    last_s: float = 0.0
    timer: asyncio.TimerHandle | None = None
    started_at: int = 0


@dataclass(slots=True)
class _Fetch:
    result: asyncio.Future[TransferResult]
    timeout: asyncio.Timeout | None = None  # the wait for the offer; lifted once it comes


@dataclass(slots=True)
class _Outgoing:
    sender: fx.Sender
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    failure: fx.FileXferError | None = None


class FileEndpoint:
    """One end of a ``file`` channel (see the module docstring for its invariants)."""

    def __init__(self, channel: FileChannel, workspace: Path, limits: FileLimits | None = None,
                 *, serve: bool = True) -> None:
        self.channel = channel
        self.workspace = workspace
        self.limits = limits or FileLimits()
        self.serve = serve
        self.state = "open"
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors = 0
        self.last_error: str | None = None
        self.completed: deque[TransferResult] = deque(maxlen=_HISTORY)
        self._incoming: dict[str, _Incoming] = {}
        self._outgoing: dict[str, _Outgoing] = {}
        self._waiters: dict[str, _Fetch] = {}
        # transfers that failed here: their chunks still in flight are dropped unanswered
        self._dead: deque[str] = deque(maxlen=_HISTORY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    # -- status and lifetime ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The subflow's state, bytes, errors and transfers (for the node's ``rtc`` status)."""
        active = [{"id": t.offer.id, "name": t.offer.name, "direction": "in",
                   "size": t.offer.size, "offset": t.receiver.offset if t.receiver else 0,
                   "state": t.receiver.state.value if t.receiver else "preparing"}
                  for t in self._incoming.values()]
        active += [{"id": o.sender.id, "name": o.sender.offer_msg.name, "direction": "out",
                    "size": o.sender.size, "offset": o.sender.offset,
                    "state": o.sender.state.value} for o in self._outgoing.values()]
        # state/bytes_in/bytes_out/errors_total/last_error: the shape of a peer's subflow
        # in node.rtc (docs/protocol.md), so the peer runtime can report it as is
        return {"state": self.state, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "errors_total": self.errors, "last_error": self.last_error,
                "transfers": active,
                "completed": [{"id": r.id, "name": r.name, "direction": r.direction,
                               "ok": r.ok, "size": r.size, "error": r.error}
                              for r in self.completed]}

    def connection_lost(self) -> None:
        """The channel closed: every transfer fails (partial files stay, to be resumed) and
        the endpoint's tasks are cancelled (nothing they do can reach the peer any more),
        so the channel's lifetime bounds theirs even if the caller dropped the endpoint."""
        if self.state == "closed":
            return
        self.state = "closed"
        for task in self._tasks:
            task.cancel()
        for tid in list(self._incoming):
            self._fail_incoming(tid, "connection_lost", "the file channel closed", notify=False)
        for out in self._outgoing.values():
            out.failure = out.failure or fx.FileXferError("the file channel closed",
                                                          code="connection_lost")
            out.sender.fail()
            out.wake.set()
        for tid in list(self._waiters):
            self._resolve(tid, error="connection_lost", message="the file channel closed")

    def close(self) -> None:
        """Close the channel and cancel the endpoint's tasks (:meth:`aclose` awaits them)."""
        self.connection_lost()
        with contextlib.suppress(Exception):
            self.channel.close()

    async def aclose(self) -> None:
        self.close()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _active(self) -> int:
        return len(self._incoming) + len(self._outgoing)

    def _record_error(self, code: str, message: str) -> None:
        self.errors += 1
        self.last_error = f"{code}: {message}"

    def _send(self, message: fx.Control) -> None:
        with contextlib.suppress(ConnectionError):
            self.channel.send(fx.encode_control(message))

    def _refuse(self, exc: fx.FileXferError) -> None:
        """A hostile or out-of-place message: count it, end the transfer it names, tell
        the peer (never in answer to an ``error``)."""
        self._record_error(exc.code, exc.message)
        tid = exc.transfer_id
        if tid is not None and tid in self._incoming:
            self._fail_incoming(tid, exc.code, exc.message, notify=True)
            return
        if tid is not None and tid in self._outgoing:
            out = self._outgoing[tid]
            out.failure = exc
            out.sender.fail()
            out.wake.set()
        self._send(fx.Error(tid, exc.code, exc.message))

    # -- receiving ----------------------------------------------------------------------

    def feed(self, message: bytes | str) -> None:
        """One message from the peer (the channel's ``message`` callback). Never raises:
        a bad message fails the transfer it names and is answered with ``error``."""
        if self.state == "closed":
            return
        try:
            if isinstance(message, str):
                self._on_control(fx.parse_control(message))
            else:
                self._on_chunk(fx.parse_chunk(message))
        except fx.FileXferError as exc:
            self._refuse(exc)
        except Exception:  # a bug here must not take the channel (or aiortc's emitter) down
            logger.exception("file channel message failed")
            self._refuse(fx.FileXferError("the message could not be handled", code="internal"))

    def _on_chunk(self, chunk: fx.Chunk) -> None:
        inc = self._incoming.get(chunk.id)
        if inc is None or inc.receiver is None:
            if chunk.id in self._dead:  # the sender has not heard of the failure yet
                return
            self._dead.append(chunk.id)
            raise fx.FileXferError(f"no transfer {chunk.id!r} is receiving",
                                   code="not_found", transfer_id=chunk.id)
        ack = inc.receiver.chunk(chunk)
        try:
            os.pwrite(inc.fd, chunk.payload, chunk.offset)
        except OSError as exc:
            raise fx.FileXferError(f"cannot write the file: {exc.strerror}", code="internal",
                                   transfer_id=chunk.id) from None
        self.bytes_in += len(chunk.payload)
        inc.last_s = self._loop.time()
        if ack is not None:
            self._send(ack)

    def _on_control(self, msg: fx.Control) -> None:
        if isinstance(msg, fx.Offer):
            self._on_offer(msg)
        elif isinstance(msg, fx.Get):
            self._on_get(msg)
        elif isinstance(msg, fx.Done):
            self._on_done(msg)
        elif isinstance(msg, fx.Error):
            self._on_error(msg)
        else:  # accept, ack, verified: for one of our senders
            out = self._outgoing.get(msg.id)
            if out is None:
                raise fx.FileXferError(f"no transfer {msg.id!r} is sending", code="not_found",
                                       transfer_id=msg.id)
            out.sender.receive(msg)
            out.wake.set()

    def _check_new(self, tid: str) -> None:
        if tid in self._incoming or tid in self._outgoing:
            raise fx.FileXferError(f"transfer {tid!r} is already running", code="conflict")
        if self._active() >= self.limits.max_transfers:
            raise fx.FileXferError(f"at most {self.limits.max_transfers} transfers at once on "
                                   "a channel; retry when one ends", code="quota_exceeded",
                                   transfer_id=tid)

    def _on_offer(self, offer: fx.Offer) -> None:
        if not self.serve and offer.id not in self._waiters:
            raise fx.FileXferError("this end takes only the files it asked for",
                                   code="invalid_request", transfer_id=offer.id)
        self._check_new(offer.id)
        if offer.size > self.limits.max_file_bytes:
            raise fx.FileXferError(f"{offer.size} bytes is over the {self.limits.max_file_bytes}"
                                   "-byte limit", code="quota_exceeded", transfer_id=offer.id)
        if any(t.offer.name == offer.name for t in self._incoming.values()):
            raise fx.FileXferError(f"{offer.name!r} is already being received",
                                   code="conflict", transfer_id=offer.id)
        fetch = self._waiters.get(offer.id)
        if fetch is not None and fetch.timeout is not None:
            fetch.timeout.reschedule(None)  # from here on the idle timer bounds the wait
        inc = _Incoming(offer, self.workspace / fx.part_name(offer.name, offer.sha256),
                        self.workspace / offer.name, last_s=self._loop.time())
        self._incoming[offer.id] = inc
        self._arm_idle(offer.id)
        self._spawn(self._start_incoming(inc), f"file-in-{offer.id}")

    async def _start_incoming(self, inc: _Incoming) -> None:
        tid = inc.offer.id
        opening = self._loop.run_in_executor(None, open_part, inc.part, inc.offer)
        try:
            # shielded: a cancelled wait must still close the descriptor the thread opens
            fd, offset, hasher = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise
        except OSError as exc:
            self._fail_incoming(tid, "internal", f"cannot open the file: {exc.strerror}",
                                notify=True)
            return
        if self._incoming.get(tid) is not inc:  # failed or closed meanwhile
            os.close(fd)
            return
        inc.fd = fd
        inc.started_at = offset
        inc.receiver = fx.Receiver(inc.offer, hasher, offset, self.limits.window_bytes)
        inc.last_s = self._loop.time()
        self._send(inc.receiver.accept())

    def _on_done(self, done: fx.Done) -> None:
        inc = self._incoming.get(done.id)
        if inc is None or inc.receiver is None:
            raise fx.FileXferError(f"no transfer {done.id!r} is receiving", code="not_found",
                                   transfer_id=done.id)
        ok = inc.receiver.done(done)
        if inc.timer is not None:
            inc.timer.cancel()
        self._spawn(self._finish_incoming(inc, ok), f"file-fin-{done.id}")

    async def _finish_incoming(self, inc: _Incoming, ok: bool) -> None:
        tid = inc.offer.id
        assert inc.receiver is not None
        fd, inc.fd = inc.fd, -1
        try:
            await asyncio.to_thread(commit if ok else discard, fd, inc.part, inc.final)
        except OSError as exc:
            self._fail_incoming(tid, "internal", f"cannot keep the file: {exc.strerror}",
                                notify=True)
            return
        if self._incoming.get(tid) is not inc:  # the channel closed meanwhile
            return
        verdict = inc.receiver.committed(ok)
        self._incoming.pop(tid, None)
        self._send(verdict)
        result = TransferResult(tid, inc.offer.name, "in", inc.offer.size, inc.offer.sha256,
                                ok, inc.started_at, inc.offer.size - inc.started_at,
                                inc.final if ok else None,
                                None if ok else "sha256_mismatch",
                                "" if ok else "the sha256 did not match; the file was "
                                              "discarded")
        if not ok:
            self._record_error("sha256_mismatch", f"{inc.offer.name!r}")
        self._finished(result)

    def _on_error(self, err: fx.Error) -> None:
        self._record_error(err.code, f"from the peer: {err.message}")
        if err.id is None:
            return
        if err.id in self._incoming:
            self._fail_incoming(err.id, err.code, err.message, notify=False)
        elif err.id in self._outgoing:
            out = self._outgoing[err.id]
            out.failure = out.failure or fx.FileXferError(err.message, code=err.code,
                                                          transfer_id=err.id)
            out.sender.fail()
            out.wake.set()
        elif err.id in self._waiters:
            self._resolve(err.id, error=err.code, message=err.message)

    def _arm_idle(self, tid: str) -> None:
        inc = self._incoming[tid]
        due = inc.last_s + self.limits.timeout_s
        inc.timer = self._loop.call_at(due, self._check_idle, tid)

    def _check_idle(self, tid: str) -> None:
        inc = self._incoming.get(tid)
        if inc is None:
            return
        if self._loop.time() - inc.last_s >= self.limits.timeout_s:
            self._record_error("request_timeout", f"transfer {tid!r} idle")
            self._fail_incoming(tid, "request_timeout", f"nothing for {self.limits.timeout_s:g}"
                                " s; resume with a new offer", notify=True)
        else:
            self._arm_idle(tid)

    def _fail_incoming(self, tid: str, code: str, message: str, *, notify: bool) -> None:
        inc = self._incoming.pop(tid, None)
        if inc is None:
            return
        if inc.timer is not None:
            inc.timer.cancel()
        if inc.receiver is not None:
            inc.receiver.fail()
        if inc.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(inc.fd)
            inc.fd = -1
            if inc.receiver is not None and inc.receiver.offset == 0:
                # nothing to resume: no empty .part left behind per abandoned offer
                with contextlib.suppress(OSError):
                    inc.part.unlink()
        if notify:
            self._send(fx.Error(tid, code, message))
        result = TransferResult(tid, inc.offer.name, "in", inc.offer.size, inc.offer.sha256,
                                False, inc.started_at,
                                (inc.receiver.offset - inc.started_at) if inc.receiver else 0,
                                error=code, message=message)
        self._finished(result)

    def _finished(self, result: TransferResult) -> None:
        self.completed.append(result)
        if not result.ok:
            self._dead.append(result.id)
        fetch = self._waiters.pop(result.id, None)
        if fetch is not None and not fetch.result.done():
            fetch.result.set_result(result)

    def _resolve(self, tid: str, *, error: str, message: str) -> None:
        fetch = self._waiters.pop(tid, None)
        if fetch is not None and not fetch.result.done():
            fetch.result.set_result(TransferResult(tid, "", "in", 0, "", False, error=error,
                                                   message=message))

    # -- sending ------------------------------------------------------------------------

    def _on_get(self, get: fx.Get) -> None:
        if not self.serve:
            raise fx.FileXferError("this end serves no files", code="invalid_request",
                                   transfer_id=get.id)
        self._check_new(get.id)
        path = self.workspace / get.name
        # reserve the id now, so a second get with it is a conflict
        placeholder = fx.Offer(get.id, get.name, 0, "0" * 64)
        self._outgoing[get.id] = _Outgoing(fx.Sender(placeholder))
        self._spawn(self._serve_get(get, path), f"file-get-{get.id}")

    async def _serve_get(self, get: fx.Get, path: Path) -> None:
        try:
            size, digest = await asyncio.to_thread(hash_file, path,
                                                   self.limits.max_file_bytes)
        except FileNotFoundError:
            self._outgoing.pop(get.id, None)
            self._refuse(fx.FileXferError(f"no file {get.name!r} in the workspace",
                                          code="not_found", transfer_id=get.id))
            return
        except (OSError, ValueError) as exc:
            self._outgoing.pop(get.id, None)
            self._refuse(fx.FileXferError(f"cannot send {get.name!r}: {exc}",
                                          code="quota_exceeded" if isinstance(exc, ValueError)
                                          else "invalid_request", transfer_id=get.id))
            return
        self._outgoing.pop(get.id, None)
        try:
            result = await self._send_path(path, fx.Offer(get.id, get.name, size, digest))
        except (OSError, fx.FileXferError) as exc:  # gone or replaced since it was hashed
            self._refuse(fx.FileXferError(f"cannot send {get.name!r}: {exc}",
                                          code="not_found", transfer_id=get.id))
            return
        if not result.ok:
            logger.info("file download failed",
                        extra={"transfer_id": get.id, "code": result.error})

    async def send_file(self, path: Path, *, name: str | None = None,
                        transfer_id: str | None = None,
                        offset: int | None = None) -> TransferResult:
        """Send the local file ``path`` to the peer as ``name`` (default: its file name);
        the peer resumes from what it holds (at most ``offset``). Returns how it ended; a
        local file that cannot be read raises OSError, a bad name FileXferError."""
        tid = transfer_id or secrets.token_hex(8)
        fname = fx.safe_name(name or path.name)
        self._check_new(tid)
        size, digest = await asyncio.to_thread(hash_file, path, fx.MAX_SIZE)
        return await self._send_path(path, fx.Offer(tid, fname, size, digest, offset))

    async def _send_path(self, path: Path, offer: fx.Offer) -> TransferResult:
        tid = offer.id
        self._check_new(tid)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        out = _Outgoing(fx.Sender(offer, self.limits.chunk_bytes, self.limits.window_bytes))
        self._outgoing[tid] = out
        try:
            start = await self._run_sender(out, fd)
            result = TransferResult(tid, offer.name, "out", offer.size, offer.sha256, True,
                                    start, offer.size - start)
            self._finished(result)
            return result
        except (fx.FileXferError, TimeoutError, ConnectionError) as exc:
            s = out.sender
            s.fail()
            if isinstance(exc, fx.FileXferError):
                code, message = exc.code, exc.message
            elif isinstance(exc, TimeoutError):
                code, message = "request_timeout", f"no progress for {self.limits.timeout_s:g} s"
                self._send(fx.Error(tid, code, message))
            else:
                code, message = "connection_lost", "the file channel closed"
            if s.verdict is not None and not s.verdict.ok:
                code, message = "sha256_mismatch", "the receiver's sha256 did not match"
            self._record_error(code, message)
            result = TransferResult(tid, offer.name, "out", offer.size, offer.sha256, False,
                                    s.acked, 0, error=code, message=message)
            self._finished(result)
            return result
        finally:
            self._outgoing.pop(tid, None)
            os.close(fd)

    async def _run_sender(self, out: _Outgoing, fd: int) -> int:
        """Rule 1 of the protocol module, paced by the window and by the channel's
        buffered amount. Returns the offset the receiver resumed from."""
        s, channel, timeout_s = out.sender, self.channel, self.limits.timeout_s
        channel.send(fx.encode_control(s.offer()))
        await self._wait(out, lambda: s.state is not fx.State.OFFERED)
        start = s.offset
        while not s.all_sent:
            nxt = s.next_chunk()
            if nxt is None:  # the window is full: wait for an ack
                await self._wait(out, lambda: s.next_chunk() is not None or s.all_sent)
                continue
            if channel.buffered_amount > self.limits.buffered_low_bytes:
                async with asyncio.timeout(timeout_s):
                    await channel.wait_buffered_low()
                self._raise_if_failed(out)
                continue
            offset, length = nxt
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise fx.FileXferError(f"{s.offer_msg.name!r} shrank while being sent",
                                       code="internal", transfer_id=s.id)
            s.sent(offset, length)  # first: a relay's send may call back into feed
            channel.send(fx.encode_chunk(s.id, offset, data))
            self.bytes_out += length
        channel.send(fx.encode_control(s.done()))
        await self._wait(out, lambda: s.state is not fx.State.FINISHING)
        if s.state is not fx.State.VERIFIED:
            raise fx.FileXferError("the receiver's sha256 did not match",
                                   code="sha256_mismatch", transfer_id=s.id)
        return start

    def _raise_if_failed(self, out: _Outgoing) -> None:
        if out.failure is not None:
            raise out.failure
        if out.sender.state is fx.State.FAILED:
            raise fx.FileXferError("the transfer failed", code="sha256_mismatch"
                                   if out.sender.verdict is not None else "protocol_error")

    async def _wait(self, out: _Outgoing, ready: Any) -> None:
        async with asyncio.timeout(self.limits.timeout_s):
            while True:
                self._raise_if_failed(out)
                if ready():
                    return
                out.wake.clear()
                await out.wake.wait()

    async def fetch(self, name: str, *, transfer_id: str | None = None) -> TransferResult:
        """Ask the peer for its file ``name`` and receive it into this end's workspace
        (resuming a ``.part`` left by an earlier attempt). Returns how it ended."""
        tid = transfer_id or secrets.token_hex(8)
        fname = fx.safe_name(name)
        self._check_new(tid)
        if tid in self._waiters:
            raise fx.FileXferError(f"transfer {tid!r} is already awaited", code="conflict")
        fetch = _Fetch(self._loop.create_future())
        self._waiters[tid] = fetch
        try:
            self.channel.send(fx.encode_control(fx.Get(tid, fname)))
            # the timeout bounds the wait for the offer; from the offer on, the incoming
            # transfer's idle timer bounds it (_on_offer lifts this one)
            async with asyncio.timeout(self.limits.timeout_s) as fetch.timeout:
                return await fetch.result
        except (TimeoutError, ConnectionError) as exc:
            code = "request_timeout" if isinstance(exc, TimeoutError) else "connection_lost"
            self._record_error(code, f"get {fname!r}")
            return TransferResult(tid, fname, "in", 0, "", False, error=code,
                                  message=str(exc) or code)
        finally:
            self._waiters.pop(tid, None)


def _close_opened(opening: asyncio.Future[tuple[int, int, Any]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result()[0])


def attach_file_channel(channel: Any, workspace: Path, limits: FileLimits | None = None,
                        *, serve: bool = True) -> FileEndpoint:
    """The peer runtime's hook for a data channel labelled ``file`` (aiortc
    ``RTCDataChannel``, open or opening): serve uploads into and downloads from
    ``workspace`` (created if missing). Call within the running loop; the endpoint's
    ``close()`` / ``aclose()`` end it, its ``status()`` reports it."""
    limits = limits or FileLimits()
    workspace.mkdir(parents=True, exist_ok=True)
    endpoint = FileEndpoint(AiortcFileChannel(channel, low_bytes=limits.buffered_low_bytes),
                            workspace, limits, serve=serve)
    channel.on("message", endpoint.feed)
    channel.on("close", endpoint.connection_lost)
    return endpoint

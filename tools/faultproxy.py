"""A fault-injecting TCP proxy for tests, drills and the soak, on loopback; every fault can be
switched while it runs, per direction.

    python -m tether.tools.faultproxy --upstream 127.0.0.1:8700 [--listen 127.0.0.1:0]
                                      [--port-file FILE] [--control-port-file FILE]

Directions: ``up`` is client -> upstream (what a node sends the controller), ``down`` is
upstream -> client. ``both`` applies a setting to each.

Faults (:class:`Faults`, one per direction; :meth:`FaultProxy.set` changes them at run time
and they apply to live connections from their next chunk on):

* ``latency_s`` with ``jitter_s``: each chunk is held ``latency_s ± jitter_s`` (uniform,
  never below 0) before it is written; chunks never overtake each other (a chunk's due time
  is at least the one before it), as on one TCP stream.
* ``bandwidth_bps``: at most that many bytes per second are written (a token bucket of one
  second's worth); 0 is no cap.
* ``slice``: every byte is written and drained on its own, with ``TCP_NODELAY`` set, so the
  peer reads 1-byte segments (what a WebSocket parser must reassemble).
* ``cut_after``: after exactly that many more bytes in that direction (counted per connection
  from the moment the fault is set, or from the connection's start if set before), the proxy
  forwards nothing more and closes both sockets (FIN). One-shot per connection.
* ``blackhole``: bytes in that direction are read and dropped (accept and swallow, never
  answer). With both directions blackholed, a new connection is accepted and never dialled
  upstream until healed. Dropped bytes are gone, as in-flight bytes are in a partition; and
  since TCP never resumes a stream with a hole in it (a partition ends either in a
  retransmission that loses nothing or in a dead connection), a connection that lost bytes
  is reset (RST both ways) when its blackhole is lifted: the peers see the connection die,
  never a silent gap inside a live one.
* ``slow_close_s``: when the source ends its stream (EOF), the proxy holds the close that
  long before passing it on: the peer sees a half-dead connection for that time.
* ``duplicate``: the next chunk in that direction is preceded by the bytes of an earlier
  chunk of the same connection written again (``duplicate_index``, default 0: the first
  chunk). One-shot per arming. TCP never delivers duplicate bytes to an application, so this
  does not model a network; it models a broken middlebox replaying bytes, and it is the test
  that a receiver refuses a corrupt stream cleanly. For WebSocket, chunk 0 is the HTTP
  handshake: its first byte (``G`` 0x47 upstream, ``H`` 0x48 downstream) read as a frame
  header sets RSV1 with a reserved opcode (7) or a fragmented control frame (close, FIN 0),
  which RFC 6455 makes a protocol error: the receiver must fail the connection (1002) and the
  node reconnect. A later index may replay a whole frame, which the stream layer above must
  drop as a duplicate sequence.

One-off actions: :meth:`FaultProxy.reset` aborts every live connection with an RST (``SO_LINGER``
0) towards the side(s) named; :meth:`FaultProxy.blackhole` / :meth:`FaultProxy.heal` keep their
old meaning (both directions; heal clears every fault).

Control from another process (the soak driver runs proxies in its own process, but a test may
start one as a child): ``--control-port-file`` makes the proxy listen on a second loopback
port for JSON lines, one request per line, one answer per line (:class:`ProxyControl` is the
client)::

    {"op": "set", "direction": "down", "latency_s": 0.1, "jitter_s": 0.05}
    {"op": "reset", "direction": "both"}   {"op": "heal"}   {"op": "stats"}

Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. The control port is
loopback only and unauthenticated: a test tool, never to be exposed. The old signals still
work: SIGUSR1 blackholes, SIGUSR2 heals, SIGTERM/SIGINT stop.

Memory: each direction holds at most :data:`QUEUE_CHUNKS` chunks of at most :data:`CHUNK`
bytes between its reader and its writer (backpressure through the bounded queue and
``drain``), so a slow or delayed side cannot grow memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

CHUNK = 64 * 1024
QUEUE_CHUNKS = 64
CONNECT_TIMEOUT_S = 10.0
CONTROL_LINE_BYTES = 4096
DIRECTIONS = ("up", "down")


@dataclass(frozen=True)
class Faults:
    """The faults of one direction (module docstring). The default is a clean pipe."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bps: int = 0
    slice: bool = False
    cut_after: int | None = None
    blackhole: bool = False
    slow_close_s: float = 0.0
    duplicate: bool = False
    duplicate_index: int = 0

    def __post_init__(self) -> None:
        for name in ("latency_s", "jitter_s", "slow_close_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or \
                    not 0 <= value <= 3600:
                raise ValueError(f"{name} must be a number of seconds in [0, 3600]")
        for name in ("bandwidth_bps", "duplicate_index"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0")
        if self.cut_after is not None and (not isinstance(self.cut_after, int)
                                           or isinstance(self.cut_after, bool)
                                           or self.cut_after < 0):
            raise ValueError("cut_after must be an integer >= 0 or null")
        for name in ("slice", "blackhole", "duplicate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean")

    @property
    def active(self) -> bool:
        return self != Faults()


FAULT_NAMES = frozenset(spec.name for spec in fields(Faults))


@dataclass
class DirectionStats:
    bytes: int = 0
    writes: int = 0
    chunks: int = 0
    dropped_bytes: int = 0
    cuts: int = 0
    duplicates: int = 0


@dataclass
class ProxyStats:
    connections: int = 0
    resets: int = 0
    up: DirectionStats = field(default_factory=DirectionStats)
    down: DirectionStats = field(default_factory=DirectionStats)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of up, down, both; got {direction!r}")
    return (direction,)


class _Conn:
    """One proxied connection: the client's and the upstream's writers, and per-direction
    counters that the cut and the duplicate need."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.sent: dict[str, int] = {"up": 0, "down": 0}
        self.cut_base: dict[str, tuple[int, int]] = {}  # direction -> (generation, bytes)
        self.dup_done: dict[str, int] = {}               # direction -> generation
        self.history: dict[str, list[bytes]] = {"up": [], "down": []}
        self.lost = False  # a blackhole dropped some of its bytes
        self.closed = asyncio.Event()

    def writer(self, direction: str) -> asyncio.StreamWriter | None:
        """Where ``direction``'s bytes go."""
        return self.upstream if direction == "up" else self.client


def _abort_with_rst(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """The proxy. Serve it with ``asyncio.start_server(proxy.handle, ...)`` (or :meth:`serve`)
    and stop it with :meth:`close`. Every method is for the event loop's thread.

    Invariant: every connection task is in ``_tasks`` until it has closed both sockets."""

    def __init__(self, upstream_host: str, upstream_port: int, *,
                 rng: random.Random | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.faults: dict[str, Faults] = {d: Faults() for d in DIRECTIONS}
        self.stats = ProxyStats()
        self.rng = rng or random.Random()
        self.healed = asyncio.Event()
        self.healed.set()
        self._generation: dict[str, int] = {d: 0 for d in DIRECTIONS}
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closing = False

    # -- control ---------------------------------------------------------------------------

    @property
    def blackholed(self) -> bool:
        return all(self.faults[d].blackhole for d in DIRECTIONS)

    def set(self, direction: str, **changes: Any) -> None:
        """Change ``direction``'s faults (``up``, ``down`` or ``both``); unknown names and bad
        values raise ValueError and change nothing. Re-setting ``cut_after`` or ``duplicate``
        re-arms it on every live connection."""
        unknown = set(changes) - FAULT_NAMES
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {sorted(FAULT_NAMES)}")
        targets = _directions(direction)
        new = {d: replace(self.faults[d], **changes) for d in targets}
        lifted = any(self.faults[d].blackhole and not new[d].blackhole for d in targets)
        for d in targets:
            self.faults[d] = new[d]
            if "cut_after" in changes or "duplicate" in changes:
                self._generation[d] += 1
        self._sync_healed()
        if lifted:
            self._reset_lossy()

    def clear(self, direction: str = "both") -> None:
        """Every fault of ``direction`` off (a clean pipe again)."""
        lifted = False
        for d in _directions(direction):
            lifted = lifted or self.faults[d].blackhole
            self.faults[d] = Faults()
            self._generation[d] += 1
        self._sync_healed()
        if lifted:
            self._reset_lossy()

    def blackhole(self) -> None:
        """Both directions swallow bytes; new connections are accepted and left silent."""
        self.set("both", blackhole=True)

    def heal(self) -> None:
        """Every fault off, both directions."""
        self.clear("both")

    def _reset_lossy(self) -> None:
        # A stream with a hole in it cannot go on (module docstring, blackhole).
        for conn in [c for c in self._conns if c.lost]:
            for d in DIRECTIONS:
                _abort_with_rst(conn.writer(d))
            conn.closed.set()
            self.stats.resets += 1

    def reset(self, direction: str = "both") -> int:
        """Abort every live connection: an RST (``SO_LINGER`` 0) to the side(s) ``direction``
        names (``up``: the upstream, ``down``: the client), a plain close to the other.
        Returns how many connections were reset."""
        targets = _directions(direction)
        conns = list(self._conns)
        for conn in conns:
            for d in DIRECTIONS:
                writer = conn.writer(d)
                if d in targets:
                    _abort_with_rst(writer)
                elif writer is not None:
                    writer.close()
            conn.closed.set()
        self.stats.resets += len(conns)
        return len(conns)

    def snapshot(self) -> dict[str, Any]:
        return {"faults": {d: asdict(self.faults[d]) for d in DIRECTIONS},
                "stats": self.stats.as_dict(), "connections": len(self._conns)}

    def _sync_healed(self) -> None:
        if self.blackholed:
            self.healed.clear()
        else:
            self.healed.set()

    # -- serving ---------------------------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port``; returns the bound port (closed by :meth:`close`)."""
        self._server = await asyncio.start_server(self.handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(writer)
        self.stats.connections += 1
        try:
            await self.healed.wait()  # while blackholed, a new connection hears nothing
            if self._closing:
                return
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except (OSError, TimeoutError):
                return
            conn.upstream = up_writer
            self._conns.add(conn)
            if self._closing:
                conn.closed.set()
            try:
                async with asyncio.TaskGroup() as tg:
                    watcher = tg.create_task(self._watch_closed(conn))
                    tg.create_task(self._both(conn, reader, up_reader, up_writer, watcher))
            except* (OSError, ConnectionError, _Closed):
                pass
            finally:
                up_writer.close()
        finally:
            self._conns.discard(conn)
            self._tasks.discard(task)
            writer.close()

    async def _both(self, conn: _Conn, reader: asyncio.StreamReader,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                    watcher: asyncio.Task[None]) -> None:
        # Each direction ends on its own (a half-close is passed on as one); when both have,
        # the watcher has nothing left to watch.
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._direction(conn, "up", reader, up_writer))
                tg.create_task(self._direction(conn, "down", up_reader, conn.client))
        finally:
            watcher.cancel()

    async def _watch_closed(self, conn: _Conn) -> None:
        await conn.closed.wait()  # set by a cut or a reset: end the whole connection
        raise _Closed

    async def _direction(self, conn: _Conn, direction: str, src: asyncio.StreamReader,
                         dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._read(conn, direction, src, queue))
            tg.create_task(self._write(conn, direction, dst, queue))

    async def _read(self, conn: _Conn, direction: str, src: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        last_due = 0.0
        while True:
            data = await src.read(CHUNK)
            if not data:
                await queue.put(None)
                return
            faults = self.faults[direction]
            if faults.blackhole:
                getattr(self.stats, direction).dropped_bytes += len(data)
                conn.lost = True
                continue  # dropped on the floor
            delay = faults.latency_s
            if faults.jitter_s:
                delay = max(0.0, delay + self.rng.uniform(-faults.jitter_s, faults.jitter_s))
            last_due = max(last_due, time.monotonic() + delay)
            await queue.put((last_due, data))

    async def _write(self, conn: _Conn, direction: str, dst: asyncio.StreamWriter,
                     queue: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        stats: DirectionStats = getattr(self.stats, direction)
        bucket = _Bucket()
        while True:
            item = await queue.get()
            faults = self.faults[direction]
            if item is None:
                if faults.slow_close_s:
                    await asyncio.sleep(faults.slow_close_s)
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            faults = self.faults[direction]  # it may have changed while this chunk waited
            if faults.blackhole:
                stats.dropped_bytes += len(data)
                conn.lost = True
                continue
            generation = self._generation[direction]
            if faults.duplicate and conn.dup_done.get(direction) != generation:
                history = conn.history[direction]
                if faults.duplicate_index < len(history):
                    conn.dup_done[direction] = generation
                    stats.duplicates += 1
                    await self._emit(dst, history[faults.duplicate_index], faults, stats,
                                     bucket)
            remaining = self._cut_remaining(conn, direction, faults, generation)
            if remaining is not None and remaining <= len(data):
                if remaining:
                    await self._emit(dst, data[:remaining], faults, stats, bucket)
                    conn.sent[direction] += remaining
                stats.cuts += 1
                conn.closed.set()
                return
            if len(conn.history[direction]) < 8:  # what a duplicate may replay
                conn.history[direction].append(data)
            await self._emit(dst, data, faults, stats, bucket)
            conn.sent[direction] += len(data)
            stats.chunks += 1

    def _cut_remaining(self, conn: _Conn, direction: str, faults: Faults,
                       generation: int) -> int | None:
        if faults.cut_after is None:
            return None
        base = conn.cut_base.get(direction)
        if base is None or base[0] != generation:
            base = (generation, conn.sent[direction])
            conn.cut_base[direction] = base
        return max(0, faults.cut_after - (conn.sent[direction] - base[1]))

    async def _emit(self, dst: asyncio.StreamWriter, data: bytes, faults: Faults,
                    stats: DirectionStats, bucket: _Bucket) -> None:
        if faults.slice:
            sock = dst.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pieces = [data[i:i + 1] for i in range(len(data))]
        else:
            pieces = [data]
        for piece in pieces:
            if faults.bandwidth_bps:
                await bucket.take(len(piece), faults.bandwidth_bps)
            dst.write(piece)
            await dst.drain()
            stats.writes += 1
            stats.bytes += len(piece)

    async def close(self) -> None:
        """Stop listening and end every connection. Connections are ended by closing their
        sockets (their tasks return normally: asyncio's server logs a handler that ends
        cancelled as an error); a task still dialling upstream after a second is cancelled."""
        if self._server is not None:
            self._server.close()
        self._closing = True
        self.healed.set()
        for conn in list(self._conns):
            conn.closed.set()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- the control endpoint ---------------------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request (module docstring); never raises for bad input."""
        try:
            op = request.get("op")
            direction = request.get("direction", "both")
            if not isinstance(direction, str):
                raise ValueError("direction must be a string")
            if op == "set":
                changes = {k: v for k, v in request.items() if k not in ("op", "direction")}
                self.set(direction, **changes)
            elif op == "clear":
                self.clear(direction)
            elif op == "heal":
                self.heal()
            elif op == "blackhole":
                self.blackhole()
            elif op == "reset":
                return {"ok": True, "reset": self.reset(direction)}
            elif op != "stats":
                raise ValueError(f"unknown op {op!r}")
            return {"ok": True, **self.snapshot()}
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}

    async def handle_control(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    return
                except asyncio.IncompleteReadError:
                    return
                if len(line) > CONTROL_LINE_BYTES:
                    answer: dict[str, Any] = {"ok": False, "error": "request too long"}
                else:
                    try:
                        request = json.loads(line)
                    except ValueError:
                        request = None
                    answer = (self.control(request) if isinstance(request, dict)
                              else {"ok": False, "error": "not a JSON object"})
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()


class _Closed(Exception):
    """A connection was cut or reset by the proxy: end its tasks."""


class _Bucket:
    """A token bucket of one second's worth of ``rate`` bytes."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.at = time.monotonic()

    async def take(self, n: int, rate: int) -> None:
        now = time.monotonic()
        self.tokens = min(float(rate), self.tokens + (now - self.at) * rate)
        self.at = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / rate)


class ProxyControl:
    """A blocking client for a proxy's control port (another process's proxy)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> None:
        self.address = (host, port)
        self.timeout_s = timeout_s

    def request(self, op: str, **body: Any) -> dict[str, Any]:
        with socket.create_connection(self.address, timeout=self.timeout_s) as sock:
            sock.sendall(json.dumps({"op": op, **body}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer: dict[str, Any] = json.loads(data)
        if not answer.get("ok"):
            raise ValueError(answer.get("error", "the proxy refused the request"))
        return answer

    def set(self, direction: str, **faults: Any) -> dict[str, Any]:
        return self.request("set", direction=direction, **faults)

    def _reset_lossy(self) -> None:
        # A stream with a hole in it cannot go on (module docstring, blackhole).
        for conn in [c for c in self._conns if c.lost]:
            for d in DIRECTIONS:
                _abort_with_rst(conn.writer(d))
            conn.closed.set()
            self.stats.resets += 1

    def reset(self, direction: str = "both") -> int:
        return int(self.request("reset", direction=direction)["reset"])

    def heal(self) -> dict[str, Any]:
        return self.request("heal")

    def stats(self) -> dict[str, Any]:
        return self.request("stats")


async def _main(args: argparse.Namespace) -> int:
    up_host, _, up_port = args.upstream.rpartition(":")
    host, _, port = args.listen.rpartition(":")
    proxy = FaultProxy(up_host, int(up_port))
    bound = await proxy.serve(host, int(port))
    control: asyncio.Server | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The handlers go in before the port file: a test that read the file may signal at once.
    loop.add_signal_handler(signal.SIGUSR1, proxy.blackhole)
    loop.add_signal_handler(signal.SIGUSR2, proxy.heal)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.control_port_file:
        control = await asyncio.start_server(proxy.handle_control, "127.0.0.1", 0,
                                             limit=CONTROL_LINE_BYTES)
        _write_atomic(Path(args.control_port_file),
                      f"{control.sockets[0].getsockname()[1]}\n")
    if args.port_file:
        _write_atomic(Path(args.port_file), f"{bound}\n")
    print(f"faultproxy listening on {host}:{bound} -> {args.upstream}", flush=True)
    await stop.wait()
    if control is not None:
        control.close()
    await proxy.close()
    return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faultproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--control-port-file",
                        help="listen for JSON-line control requests on a loopback port and "
                             "write that port here")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

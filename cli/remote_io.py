"""The operator's terminal side of interactive io: ``tether exec`` with stdin and Ctrl-C,
and ``tether shell`` (a pty on the node). The controller's end is ``controller/api/io.py``;
the frames are described in docs/protocol.md "Interactive io".

``tether exec``:
* stdin is streamed when it is not a terminal (``echo hi | tether exec n -- cat``), or
  with ``-i``; its end is the remote stdin's end. Input is sent only within the credit
  the controller grants (bounded end to end).
* Ctrl-C sends SIGINT to the remote process group and keeps following: the command ends
  with its real outcome (a shell's 130 for SIGINT). A second Ctrl-C, or the first with
  ``--detach``, detaches: the command goes on and the CLI says how to follow it.
* The exit status is the remote one (``exit_code_of``), 127 for a missing program.

``tether shell``: the local terminal in raw mode, every byte typed goes to the remote pty
(Ctrl-C included: the remote line discipline turns it into SIGINT), SIGWINCH sends the new
size, and the remote exit code is this process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios
import tty
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.frames import MAX_IO_DATA, Frame, as_bytes

from .client import Api, CliError
from .output import OutputWriter, follow

OPEN_TIMEOUT_S = 15.0
EXIT_DETACHED = 130


class Detached(Exception):
    """The operator detached (a second Ctrl-C, or Ctrl-C with ``--detach``)."""


def io_url(api: Api, path: str) -> str:
    return api.ws_url.removesuffix("/ws") + path


async def _dial(api: Api, path: str) -> ClientConnection:
    return await connect(io_url(api, path), subprotocols=[JSON_SUBPROTOCOL],  # type: ignore[list-item]
                         additional_headers={"Authorization": f"Bearer {api.token}"},
                         open_timeout=OPEN_TIMEOUT_S, close_timeout=2, ping_interval=20,
                         ping_timeout=60, max_size=4 << 20,
                         **api.ws_kwargs)  # the same trust (--ca-file, --pin-sha256)


async def _expect(ws: ClientConnection, t: str) -> Frame:
    async with asyncio.timeout(OPEN_TIMEOUT_S):
        while True:
            frame = decode_json(await ws.recv())
            if frame.t == t:
                return frame
            if frame.t == "error":
                raise CliError(f"{frame.b.get('message')} ({frame.b.get('code')})")


class _Credit:
    """Input bytes the controller lets this client have unacked (``credit`` frames)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.changed = asyncio.Event()

    def grant(self, n: int) -> None:
        self.bytes += n
        self.changed.set()

    async def take(self, most: int) -> int:
        while self.bytes <= 0:
            self.changed.clear()
            await self.changed.wait()
        n = min(most, self.bytes)
        self.bytes -= n
        return n


async def _send(ws: ClientConnection, t: str, body: dict[str, Any]) -> None:
    await ws.send(encode_json(Frame(t=t, b=body)))


async def _pump_stdin(ws: ClientConnection, fd: int, credit: _Credit) -> None:
    """Local ``fd`` -> ``input`` frames, each within the credit; at end of file an ``eof``
    input."""
    loop = asyncio.get_running_loop()
    pollable = True
    while True:
        room = await credit.take(MAX_IO_DATA)
        if pollable:
            readable = asyncio.Event()
            try:
                loop.add_reader(fd, readable.set)
            except OSError:  # a regular file or /dev/null: always readable, cannot be polled
                pollable = False
            else:
                try:
                    await readable.wait()
                finally:
                    loop.remove_reader(fd)
        try:
            data = os.read(fd, room)
        except BlockingIOError:
            credit.grant(room)
            continue
        except OSError:
            data = b""
        if len(data) < room:
            credit.grant(room - len(data))
        if not data:
            await _send(ws, "input", {"data": b"", "eof": True})
            return
        await _send(ws, "input", {"data": data})


# -- exec ---------------------------------------------------------------------------------------

class _ExecIo:
    """The Ctrl-C state of one attached ``tether exec`` (module docstring)."""

    def __init__(self, *, detach_on_interrupt: bool, on_interrupt: Callable[[], None]) -> None:
        self.detach_on_interrupt = detach_on_interrupt
        self.on_interrupt = on_interrupt
        self.detached = asyncio.Event()
        self.interrupts = 0
        self.interrupt_pending = False  # Ctrl-C before the io stream was up: sent once it is
        self.ws: ClientConnection | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def interrupted(self) -> None:
        self.interrupts += 1
        if self.detach_on_interrupt or self.interrupts > 1:
            self.detached.set()
            return
        self.on_interrupt()
        if self.ws is None:
            self.interrupt_pending = True
        else:
            self.send_interrupt(self.ws)

    def send_interrupt(self, ws: ClientConnection) -> None:
        self.interrupt_pending = False
        task = asyncio.get_running_loop().create_task(
            _send(ws, "signal", {"signal": "INT"}))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


async def exec_attached(api: Api, command_id: str, writer: OutputWriter, *,
                        stdin_fd: int | None, detach_on_interrupt: bool,
                        on_interrupt: Callable[[], None],
                        early_interrupts: list[int] | None = None) -> dict[str, Any]:
    """Follow the command's output to its end (``follow``) while its io stream carries
    stdin (from ``stdin_fd``) and Ctrl-C. Returns the final command; raises Detached (a
    second Ctrl-C, Ctrl-C with ``detach_on_interrupt``, or a Ctrl-C the node could not be
    reached with: a queued command, an offline node). ``early_interrupts`` holds one item
    per Ctrl-C the caller caught between submitting and calling this: they count."""
    loop = asyncio.get_running_loop()
    state = _ExecIo(detach_on_interrupt=detach_on_interrupt, on_interrupt=on_interrupt)
    final: dict[str, Any] | None = None
    loop.add_signal_handler(signal.SIGINT, state.interrupted)
    for _ in early_interrupts or ():
        state.interrupted()
    try:
        async with asyncio.TaskGroup() as tg:
            follower = tg.create_task(follow(api, command_id, writer))
            stopper = tg.create_task(state.detached.wait())
            io_task = tg.create_task(_exec_io(api, command_id, stdin_fd, state))
            await asyncio.wait({follower, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopper, io_task):
                task.cancel()
            if follower.done():
                final = follower.result()
            else:
                follower.cancel()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if final is None:
        raise Detached
    return final


async def _exec_io(api: Api, command_id: str, stdin_fd: int | None, state: _ExecIo) -> None:
    """The command's io stream, for as long as it is useful; losing it loses only stdin
    and Ctrl-C forwarding (the output is followed apart), so failures end it quietly."""
    with contextlib.suppress(OSError, TimeoutError, CliError, websockets.ConnectionClosed,
                             websockets.InvalidHandshake):
        async with await _dial(api, f"/api/v1/commands/{command_id}/io") as ws:
            await _expect(ws, "opened")
            state.ws = ws
            if state.interrupt_pending:
                state.send_interrupt(ws)
            credit = _Credit()
            try:
                async with asyncio.TaskGroup() as tg:
                    feeder = None if stdin_fd is None else tg.create_task(
                        _pump_stdin(ws, stdin_fd, credit))
                    async for message in ws:
                        frame = decode_json(message)
                        if frame.t == "credit" and isinstance(frame.b.get("bytes"), int):
                            credit.grant(frame.b["bytes"])
                        elif frame.t == "signalled" and frame.b.get("delivered") is False:
                            state.detached.set()  # nobody to interrupt: Ctrl-C detaches
                        elif frame.t == "exit":
                            break
                    if feeder is not None:
                        feeder.cancel()
            finally:
                state.ws = None


# -- shell --------------------------------------------------------------------------------------

def terminal_size(fd: int) -> tuple[int, int]:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ,
                                                             b"\0" * 8))
    except OSError:
        return 24, 80
    return (rows or 24), (cols or 80)


async def shell_session(api: Api, node_id: str, argv: list[str] | None, *,
                        stdin_fd: int, stdout: Any) -> dict[str, Any]:
    """One shell: returns the ``exit`` body ``{state, exit_code, error}``. The caller puts
    the terminal in raw mode around it."""
    loop = asyncio.get_running_loop()
    rows, cols = terminal_size(stdin_fd)
    body: dict[str, Any] = {"rows": rows, "cols": cols,
                            "term": os.environ.get("TERM") or "xterm-256color"}
    if argv:
        body["argv"] = argv
    try:
        ws = await _dial(api, f"/api/v1/nodes/{node_id}/shell")
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        raise CliError(f"cannot open a shell on {node_id}: {exc}") from None
    async with ws:
        try:
            await _send(ws, "open", body)
            await _expect(ws, "opened")
        except websockets.ConnectionClosed as exc:
            raise CliError(f"the controller refused the shell: "
                           f"{exc.rcvd.reason if exc.rcvd else exc}") from None
        credit = _Credit()

        def resized() -> None:
            r, c = terminal_size(stdin_fd)
            task = loop.create_task(_send(ws, "resize", {"rows": r, "cols": c}))
            resizes.add(task)
            task.add_done_callback(resizes.discard)

        resizes: set[asyncio.Task[None]] = set()
        loop.add_signal_handler(signal.SIGWINCH, resized)
        try:
            async with asyncio.TaskGroup() as tg:
                # local end of input (a pipe: `echo ls | tether shell n`) is the terminal's
                # EOF (Ctrl-D) on the node; a terminal in raw mode never ends
                typing = tg.create_task(_pump_stdin(ws, stdin_fd, credit))
                try:
                    async for message in ws:
                        frame = decode_json(message)
                        if frame.t == "output":
                            stdout.write(as_bytes(frame.b.get("data"), "data"))
                            stdout.flush()
                        elif frame.t == "credit" and isinstance(frame.b.get("bytes"), int):
                            credit.grant(frame.b["bytes"])
                        elif frame.t == "exit":
                            return dict(frame.b)
                        elif frame.t == "error":
                            raise CliError(f"{frame.b.get('message')} ({frame.b.get('code')})")
                finally:
                    typing.cancel()
        except websockets.ConnectionClosed as exc:
            reason = exc.rcvd.reason if exc.rcvd else str(exc)
            raise CliError(f"the shell's connection was lost: {reason}") from None
        finally:
            loop.remove_signal_handler(signal.SIGWINCH)
    raise CliError("the controller closed the shell without its exit status")


def run_shell(api: Api, node_id: str, argv: list[str] | None) -> dict[str, Any]:
    """:func:`shell_session` with the local terminal in raw mode (restored on the way out,
    whatever happens) when stdin is a terminal."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        tty.setraw(fd)
    try:
        return asyncio.run(shell_session(api, node_id, argv, stdin_fd=fd,
                                         stdout=sys.stdout.buffer))
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

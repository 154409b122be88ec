"""A command's output on the operator's terminal: `tether exec` and `tether logs`.

Rule 1: every byte the controller kept is written once, in order, byte-exact. Items are
written in store order (``id``); an item already written (by ``id``, or by its per-source
``seq`` when a chunk arrives twice) is skipped; bytes come from ``data_b64`` when the item
has it (docs/protocol.md §6), else from ``data`` as UTF-8.
Rule 2: the live stream (``/ws`` ``logs:<id>``) is only a hint. When it is cut off (4429 or
anything else) or an item skips a ``seq``, the missing items are fetched over REST
(``GET /api/v1/commands/{id}/logs?after=``) before anything later is written.
Rule 3: what was dropped is said. A finished ``exec`` reports the bytes its process wrote
per stream (``result.stdout_bytes`` / ``stderr_bytes``); whatever of them did not arrive
was dropped (a policy or controller cap, or lost on the way), and :meth:`OutputWriter.
dropped_bytes` says how many. The caller says so on stderr in one line and exits with
:data:`EXIT_OUTPUT_DROPPED` when the command itself succeeded.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from typing import IO, Any

import websockets
from websockets.asyncio.client import connect

from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.errors import Reaction, reaction_for_close
from tether.protocol.frames import TERMINAL_STATES, Frame

from .client import Api, CliError

EXIT_OUTPUT_DROPPED = 3  # the command succeeded but some of its output did not arrive
PAGE = 1000  # the REST log page size the controller serves by default

COUNTED_SOURCES = ("stdout", "stderr")


def _refused(close_code: int) -> bool:
    """A close after which following the live stream again cannot help (its reaction in
    ERROR_TABLE is to stop, or not to hammer: a bad token, a refused origin, another
    protocol version); any other close is resumed from the store."""
    return reaction_for_close(close_code) in (Reaction.STOP, Reaction.BACKOFF_MAX)


def item_bytes(item: dict[str, Any]) -> bytes:
    """The exact bytes of a JSON log item (``data_b64`` when present, else ``data``)."""
    b64 = item.get("data_b64")
    if isinstance(b64, str):
        return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    return str(item.get("data") or "").encode("utf-8")


class OutputWriter:
    """Writes log items to binary ``out`` / ``err`` once each, in order (Rule 1), and
    counts what it wrote per source. ``stderr`` and ``runtime`` (the node's own notes) go
    to ``err``; everything else to ``out``."""

    def __init__(self, out: IO[bytes] | None = None, err: IO[bytes] | None = None) -> None:
        self.out = out if out is not None else sys.stdout.buffer
        self.err = err if err is not None else sys.stderr.buffer
        self.last_id = 0
        self.last_seq: dict[str, int] = {}
        self.written: dict[str, int] = {}

    def emit(self, items: list[dict[str, Any]], *, stop_at_gap: bool = False) -> bool:
        """Write ``items`` (in ``id`` order). With ``stop_at_gap`` (live items), stop before
        an item that skips a ``seq`` of its source and return False: the caller fetches the
        missing ones over REST first (Rule 2). Returns True when all were handled."""
        for item in items:
            item_id, source, seq = item.get("id"), str(item.get("source")), item.get("seq")
            if not isinstance(item_id, int) or item_id <= self.last_id:
                continue
            last = self.last_seq.get(source, 0)
            if isinstance(seq, int):
                if seq <= last:  # the same chunk again (a node re-sent it after a reconnect)
                    self.last_id = item_id
                    continue
                if stop_at_gap and seq > last + 1:
                    return False
                self.last_seq[source] = seq
            self.last_id = item_id
            data = item_bytes(item)
            stream = self.err if source in ("stderr", "runtime") else self.out
            stream.write(data)
            stream.flush()
            self.written[source] = self.written.get(source, 0) + len(data)
        return True

    def dropped_bytes(self, cmd: dict[str, Any]) -> int:
        """Bytes of a finished command's output that were not written (Rule 3): from the
        byte counts its node reported, else the controller's own count of what it dropped."""
        result = cmd.get("result") if isinstance(cmd.get("result"), dict) else None
        counts = {s: result.get(f"{s}_bytes") for s in COUNTED_SOURCES} if result else {}
        if counts and all(isinstance(n, int) for n in counts.values()):
            return sum(max(0, int(n) - self.written.get(s, 0))  # type: ignore[call-overload]
                       for s, n in counts.items())
        dropped = cmd.get("log_dropped_bytes")
        return dropped if isinstance(dropped, int) else 0

    def catch_up(self, api: Api, command_id: str) -> dict[str, Any]:
        """Return the command as it stood, having written every item stored after the last
        one written. The command is read first: its output is stored before its status
        (docs/protocol.md §6), so a terminal state read first means every byte it will
        ever have is in the pages read after. Blocking: run it in a thread from async code."""
        cmd: dict[str, Any] = api.get(f"/api/v1/commands/{command_id}")
        while True:
            page = api.get(f"/api/v1/commands/{command_id}/logs",
                           params={"after": self.last_id})
            before = self.last_id
            self.emit(page["items"])
            if not page_has_more(page) or self.last_id == before:
                return cmd


def page_has_more(page: dict[str, Any]) -> bool:
    """Whether a log page says more chunks follow it. Pages are bounded in bytes as well as
    in count, so a short page is not the last one: ``more`` says. A controller that does
    not send ``more`` pages by count alone (a full page means ask again)."""
    more = page.get("more")
    if isinstance(more, bool):
        return more
    return len(page["items"]) >= PAGE


def dropped_line(n: int, command_id: str) -> str:
    """The one stderr line that says output was dropped, and where to look."""
    return (f"tether: {n} bytes of output were dropped (an output cap was reached, or they "
            f"could not be sent); see 'tether commands show {command_id}'")


async def follow(api: Api, command_id: str, writer: OutputWriter) -> dict[str, Any]:
    """Write a command's output live until it is terminal; returns the final command.

    Subscribes first, then catches up over REST, then writes live items; a gap in ``seq``
    or a lost stream is filled over REST before anything later is written (Rule 2)."""
    attempts = 0
    while True:
        try:
            async with connect(api.ws_url, subprotocols=[JSON_SUBPROTOCOL],  # type: ignore[list-item]
                               open_timeout=10, close_timeout=2, **api.ws_kwargs) as ws:
                await ws.send(encode_json(Frame(t="hello", b={"token": api.token})))
                await _expect(ws, "welcome")
                await ws.send(encode_json(Frame(t="subscribe", id="s1", b={
                    "topics": [f"command:{command_id}", f"logs:{command_id}"]})))
                await _expect(ws, "subscribed")
                cmd = await asyncio.to_thread(writer.catch_up, api, command_id)
                if cmd["state"] in TERMINAL_STATES:
                    return cmd
                attempts = 0
                while True:
                    async with asyncio.timeout(60):
                        frame = decode_json(await ws.recv())
                    if frame.t != "event":
                        continue
                    data = frame.b.get("data") or {}
                    if frame.b.get("kind") == "log.chunk":
                        if not writer.emit([data], stop_at_gap=True):
                            await asyncio.to_thread(writer.catch_up, api, command_id)
                    elif data.get("state") in TERMINAL_STATES:
                        return await asyncio.to_thread(writer.catch_up, api, command_id)
        except websockets.ConnectionClosed as exc:
            if exc.rcvd is not None and _refused(exc.rcvd.code):
                raise CliError(f"the controller refused the live stream: {exc.rcvd.reason} "
                               f"({exc.rcvd.code})") from None
            failure = str(exc)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            failure = str(exc) or type(exc).__name__
        # Cut off (4429 for a reader that fell behind) or lost: what the stream would have
        # carried is in the store; fetch it before dialling again (Rule 2).
        before = writer.last_id
        try:
            cmd = await asyncio.to_thread(writer.catch_up, api, command_id)
        except CliError:
            pass
        else:
            if cmd["state"] in TERMINAL_STATES:
                return cmd
        if writer.last_id != before:
            attempts = 0  # REST still makes progress: keep going while the stream is away
        attempts += 1
        if attempts > 30:
            raise CliError(f"lost the live stream from {api.ws_url}: {failure}")
        await asyncio.sleep(min(2.0, 0.1 * attempts))


async def _expect(ws: Any, t: str) -> Frame:
    async with asyncio.timeout(10):
        while True:
            frame = decode_json(await ws.recv())
            if frame.t == t:
                return frame
            if frame.t == "error":
                raise CliError(f"controller refused: {frame.b.get('message')}")

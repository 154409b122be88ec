"""What a soak observed, as JSON lines: the record format the history checker reads (issue 16).

One record per line, a JSON object with ``ev`` (the record kind) and that kind's fields.
Every record may carry ``t_ns``: ``time.monotonic_ns()`` of the observer. CLOCK_MONOTONIC is
one clock for the whole host, so records written by several processes of one soak can be
merged by it; :func:`load` sorts by ``t_ns`` (stably: records without it, or with equal
values, keep their file order). The checker reads the merged list in that order, so *the
order of records is the order of events*: write each record after the event it reports
(an ``applied`` after the COMMIT that holds the effect, an ``acked`` after the ack was read).

Frames (class A, PROTOCOL.md §3; ``stream`` is ``cmd`` or ``evt``; ``frame_id`` is any id
that both ends record for the same frame and that survives re-sequencing, e.g. the
``cmd.deliver``'s ``command_id`` or a ``node.event``'s envelope ``id``):

=============  ==========================================================================
``append``     the sender persisted ``frame_id`` as (``epoch``, ``q``). A frame
               re-sequenced into a new epoch gets a second ``append`` with the same id.
``sent``       the sender wrote (``epoch``, ``q``) on ``session`` (any number of times).
``applied``    the receiver committed the effect and its cursor for (``epoch``, ``q``)
               arriving on ``session``; ``replica`` is the controller replica involved
               (the applier for ``evt``). ``frame_id`` optional: resolved via ``append``.
``duplicate``  the receiver saw (``epoch``, ``q``) and did not apply it: at or below its
               cursor, or at cursor + 1 with an idempotency key applied before (which
               moves the cursor, docs/protocol.md §2).
``gap``        the receiver, at cursor ``applied``, saw ``q`` > ``applied`` + 1 and dropped it.
``acked``      the sender read a cumulative ack: everything up to ``q`` in ``epoch``.
``epoch``      a new ``epoch`` starts for (``node``, ``stream``); the receiver's cursor is
               ``cursor`` (default 0). Required before any apply in an epoch other than
               the stream's first (which is implicit, cursor 0). ``reason``
               ``sender_store_lost`` exempts unacked frames appended before it from the
               "delivered by the end" check.
``recovered``  the receiver's durable cursor, read where nothing can move it meanwhile (a
               runtime's store opening; a controller's claim, which fences every older
               session): every frame up to ``cursor`` in ``epoch`` is applied. It stands in
               for the ``applied`` records a process killed between a COMMIT and its record
               never wrote (one fsync's window); a late ``applied`` of such a frame
               confirms it.
``pending``    the sender found (``epoch``, ``q``) unacked in its store when it opened it,
               as ``frame_id``: an ``append`` for a slot no ``append`` named yet (the same
               window on the sending side), ignored for a slot already named.
``effect``     a final audit: ``frame_id``'s effect is present ``count`` times in the
               receiver's store. Once any ``effect`` exists for (node, stream), a frame
               of that stream without one counts as 0.
=============  ==========================================================================

Ownership and fencing (PROTOCOL.md §4, docs/architecture.md "Replicas"):
``claimed`` (``node``, ``replica``, ``session``: the hello's compare-and-set committed; every
earlier session of the node is fenced from here on), ``fenced`` (``node``, ``session``: that
connection was superseded or closed), ``ownership_lost`` (``node``, ``replica``).

Commands: ``cmd.submit`` (``command_id``, ``node``), ``cmd.state`` (``command_id``,
``state``, optional ``error``: a state seen, by API poll or ``/ws``), ``marker``
(``command_id``: one execution's side effect, one record per marker line, as the kill tests
count them, tests/e2e/test_core_mesh.py).

``drained``: the soak stopped injecting faults and waited for quiescence; from here on every
appended frame must have been delivered.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, ClassVar

STREAMS = ("cmd", "evt")
MAX_LINE_BYTES = 64 * 1024


class HistoryError(ValueError):
    """A history line that is not a valid record (says which line and why)."""


@dataclass(frozen=True)
class Record:
    ev: ClassVar[str] = ""
    t_ns: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Append(Record):
    ev: ClassVar[str] = "append"
    node: str
    stream: str
    frame_id: str
    epoch: int
    q: int


@dataclass(frozen=True)
class Sent(Record):
    ev: ClassVar[str] = "sent"
    node: str
    stream: str
    epoch: int
    q: int
    session: str
    frame_id: str | None = None


@dataclass(frozen=True)
class Applied(Record):
    ev: ClassVar[str] = "applied"
    node: str
    stream: str
    epoch: int
    q: int
    session: str
    replica: str | None = None
    frame_id: str | None = None


@dataclass(frozen=True)
class Duplicate(Record):
    ev: ClassVar[str] = "duplicate"
    node: str
    stream: str
    epoch: int
    q: int
    session: str | None = None


@dataclass(frozen=True)
class Gap(Record):
    ev: ClassVar[str] = "gap"
    node: str
    stream: str
    epoch: int
    q: int
    applied: int


@dataclass(frozen=True)
class Acked(Record):
    ev: ClassVar[str] = "acked"
    node: str
    stream: str
    epoch: int
    q: int
    session: str | None = None


@dataclass(frozen=True)
class EpochStart(Record):
    ev: ClassVar[str] = "epoch"
    node: str
    stream: str
    epoch: int
    cursor: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Recovered(Record):
    ev: ClassVar[str] = "recovered"
    node: str
    stream: str
    epoch: int
    cursor: int


@dataclass(frozen=True)
class Pending(Record):
    ev: ClassVar[str] = "pending"
    node: str
    stream: str
    frame_id: str
    epoch: int
    q: int


@dataclass(frozen=True)
class Effect(Record):
    ev: ClassVar[str] = "effect"
    node: str
    stream: str
    frame_id: str
    count: int


@dataclass(frozen=True)
class Claimed(Record):
    ev: ClassVar[str] = "claimed"
    node: str
    replica: str
    session: str


@dataclass(frozen=True)
class Fenced(Record):
    ev: ClassVar[str] = "fenced"
    node: str
    session: str
    replica: str | None = None


@dataclass(frozen=True)
class OwnershipLost(Record):
    ev: ClassVar[str] = "ownership_lost"
    node: str
    replica: str


@dataclass(frozen=True)
class CmdSubmit(Record):
    ev: ClassVar[str] = "cmd.submit"
    command_id: str
    node: str


@dataclass(frozen=True)
class CmdState(Record):
    ev: ClassVar[str] = "cmd.state"
    command_id: str
    state: str
    error: str | None = None


@dataclass(frozen=True)
class Marker(Record):
    ev: ClassVar[str] = "marker"
    command_id: str


@dataclass(frozen=True)
class Drained(Record):
    ev: ClassVar[str] = "drained"


RECORD_TYPES: dict[str, type[Record]] = {
    cls.ev: cls for cls in (Append, Sent, Applied, Duplicate, Gap, Acked, EpochStart,
                            Recovered, Pending, Effect, Claimed, Fenced, OwnershipLost,
                            CmdSubmit, CmdState, Marker, Drained)
}
_INT_FIELDS = frozenset({"t_ns", "epoch", "q", "applied", "cursor", "count"})


def parse_record(raw: Mapping[str, Any]) -> Record:
    """Build the typed record for one decoded line; raise :class:`HistoryError` if invalid.

    Rules: ``ev`` names a known kind; every field without a default is present; ids are
    strings; ``epoch``/``q``/``cursor``/``count``/``t_ns`` are integers ≥ 0 (``q`` ≥ 1 except
    in ``acked``, where 0 means nothing acked); ``stream`` is ``cmd`` or ``evt``. Unknown keys
    are ignored, as in the wire envelope.
    """
    kind = raw.get("ev")
    cls = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise HistoryError(f"unknown record kind {kind!r}; known: {sorted(RECORD_TYPES)}")
    values: dict[str, Any] = {}
    for spec in fields(cls):
        name = spec.name
        if name not in raw or (raw[name] is None and spec.default is not MISSING):
            if spec.default is MISSING:
                raise HistoryError(f"{kind} record lacks {name!r}")
            values[name] = spec.default
            continue
        value = raw[name]
        if name in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise HistoryError(f"{kind} record: {name} must be an integer >= 0, "
                                   f"got {value!r}")
        elif not isinstance(value, str):
            raise HistoryError(f"{kind} record: {name} must be a string, got {value!r}")
        values[name] = value
    if "stream" in values and values["stream"] not in STREAMS:
        raise HistoryError(f"{kind} record: stream must be one of {STREAMS}, "
                           f"got {values['stream']!r}")
    if "q" in values and kind != "acked" and values["q"] < 1:
        raise HistoryError(f"{kind} record: q counts from 1, got {values['q']}")
    return cls(**values)


def to_json(record: Record) -> str:
    """One line (no newline) for ``record``; fields left at None are omitted."""
    body = {"ev": record.ev}
    body.update({key: value for key, value in asdict(record).items() if value is not None})
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def parse_lines(lines: Iterable[str]) -> list[Record]:
    """Parse JSON lines (blank lines skipped) and order them by ``t_ns``, stably.

    Raises :class:`HistoryError` naming the 1-based line number of the first bad line.
    """
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line.encode()) > MAX_LINE_BYTES:
            raise HistoryError(f"line {number}: longer than {MAX_LINE_BYTES} bytes")
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise HistoryError("not a JSON object")
            records.append(parse_record(raw))
        except (ValueError, HistoryError) as exc:
            raise HistoryError(f"line {number}: {exc}") from None
    return _ordered(records)


def _ordered(records: list[Record]) -> list[Record]:
    # Records without t_ns sort as if they carried the t_ns of the record before them, so a
    # file written by one observer without clocks keeps its order.
    keyed: list[tuple[int, int, Record]] = []
    last = 0
    for index, record in enumerate(records):
        if record.t_ns is not None:
            last = record.t_ns
        keyed.append((last, index, record))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in keyed]


def load(*paths: Path) -> list[Record]:
    """Read and merge history files (one per observing process) into one ordered list."""
    lines: list[str] = []
    for path in paths:
        lines.extend(path.read_text().splitlines())
    return parse_lines(lines)


def _file_records(path: Path, file_index: int) -> Iterator[tuple[int, int, int, Record]]:
    last = 0
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                (record,) = parse_lines([line])
            except HistoryError as exc:
                raise HistoryError(f"{path}: line {number}: {str(exc).split(': ', 1)[1]}") \
                    from None
            if record.t_ns is not None:
                if record.t_ns < last:
                    raise HistoryError(f"{path}: line {number}: t_ns {record.t_ns} is earlier "
                                       f"than the line before ({last}); use load(), which "
                                       "sorts in memory")
                last = record.t_ns
            yield last, file_index, number, record


def stream(*paths: Path) -> Iterator[Record]:
    """Merge history files lazily, for histories too big to hold as records.

    The same order as :func:`load` when each file is in ``t_ns`` order (one
    :class:`HistoryWriter` per file makes it so); a file that is not raises
    :class:`HistoryError` when the reader reaches the line.
    """
    merged = heapq.merge(*(_file_records(path, index) for index, path in enumerate(paths)),
                         key=lambda item: (item[0], item[1], item[2]))
    for _, _, _, record in merged:
        yield record


class HistoryWriter:
    """Appends records to one history file, a line per record, flushed per line.

    Flushed per line so that a record survives the death of the process that wrote it
    (the observer may be a process the soak kills). Not thread-safe: one writer per thread,
    or one file per observer (:func:`load` merges them).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: Record) -> None:
        if record.t_ns is None:
            record = _with_time(record)
        self._file.write(to_json(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _with_time(record: Record) -> Record:
    values = {spec.name: getattr(record, spec.name) for spec in fields(record)}
    values["t_ns"] = time.monotonic_ns()
    return type(record)(**values)

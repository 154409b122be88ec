"""The in-process history recorder: how a controller, node runtime or sidecar writes the
frame-level records of :mod:`tether.tools.soak.history` during a soak (issue 16).

Armed by one environment variable, read once at import (like ``TETHER_FAILPOINTS``)::

    TETHER_HISTORY=/path/to/history-dir

Each process then appends to its own file ``<dir>/<role>-<pid>.jsonl`` (one writer per file,
so no locking and no interleaved lines; :func:`tether.tools.soak.history.stream` merges the
files by ``t_ns``). A record is flushed per line, so a process killed with ``-9`` keeps
everything it wrote. Unarmed, a call site costs a module-attribute load and a truth test::

    if recorder.ARMED:
        recorder.record("applied", node=node_id, stream="evt", epoch=e, q=q,
                        session=session_id, replica=replica_id)

Contract:
* ``kind`` and the fields are those of a :mod:`~tether.tools.soak.history` record; a wrong one
  raises :class:`~tether.tools.soak.history.HistoryError` while armed (a hook that writes
  nonsense must fail the soak, not feed the checker garbage).
* Write each record *after* the event it reports (``applied`` after the COMMIT, ``acked``
  after the ack was read): the checker reads the merged history as the order of events.
* ``role`` names the process kind in the file name (``controller``, ``runtime``, ``sidecar``);
  set it once with :func:`set_role` before the first record, or the file is ``proc-<pid>``.
* Never raises for I/O: a recorder that cannot write turns itself off and says so once on
  stderr (the soak then finds fewer records, never a crashed process).

Where the hooks go is in docs/reliability.md ("Recorder hooks"); this module has no call
site of its own.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from .history import HistoryWriter, parse_record

ENV_VAR = "TETHER_HISTORY"

_DIR = os.environ.get(ENV_VAR, "")
ARMED: bool = bool(_DIR)
_role = "proc"
_writer: HistoryWriter | None = None
_lock = threading.Lock()  # a store's writer thread records too (one line at a time)


def set_role(role: str) -> None:
    """Name this process's kind in its history file (before the first record)."""
    global _role
    _role = role


def record(kind: str, **fields: Any) -> None:
    """Append one record (``ev`` = ``kind``) to this process's history file, if armed."""
    global ARMED, _writer
    if not ARMED:
        return
    rec = parse_record({"ev": kind, **fields})
    try:
        with _lock:
            if _writer is None:
                path = Path(_DIR)
                path.mkdir(parents=True, exist_ok=True)
                _writer = HistoryWriter(path / f"{_role}-{os.getpid()}.jsonl")
            _writer.write(rec)
    except OSError as exc:
        ARMED = False
        print(f"tether: history recorder off: {exc}", file=sys.stderr)

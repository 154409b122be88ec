"""Simulated power loss (tools/powerloss.py): the project's own SQLite store (common/
sqlitedb.py) runs in a child process through the shim; the child is killed; power_loss()
drops every write that was not fsynced; the store is reopened without the shim.

The control (a plain kill -9 keeps unsynced writes, since the page cache survives it) shows
that the loss seen after power_loss() is the shim's doing, not the kill's.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tether.tools import powerloss

# The child writes through the project's Database: one row per write() call, printing each
# value once write() has returned (the store's "acked"), then either exits at once (no close,
# so no checkpoint) or goes on until killed.
CHILD = r"""
import asyncio, os, sys
from pathlib import Path
from tether.tools import powerloss
powerloss.install()
from tether.common.sqlitedb import Database

async def main(path, durability, first, count, forever):
    db = Database(Path(path), migrations=["CREATE TABLE t (v INTEGER PRIMARY KEY)"],
                  durability=durability)
    await db.open()
    value = first
    while forever or value < first + count:
        await db.write(lambda c, v=value: c.execute("INSERT INTO t VALUES (?)", (v,)))
        print(value, flush=True)
        value += 1
    os._exit(0)   # as a crash: no close, no checkpoint, no final sync

path, durability, first, count, forever = sys.argv[1:]
asyncio.run(main(path, durability, int(first), int(count), forever == "1"))
"""


def write_rows(path: Path, durability: str, first: int, count: int) -> list[int]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), durability, str(first),
                           str(count), "0"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return [int(line) for line in proc.stdout.split()]


def rows(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]
    finally:
        conn.close()


def test_an_fsynced_row_survives_power_loss_and_an_unsynced_one_does_not(
        tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    assert write_rows(db, "fsync", 1, 3) == [1, 2, 3]          # synchronous=FULL
    assert write_rows(db, "process", 100, 3) == [100, 101, 102]  # synchronous=NORMAL: WAL
    rolled = powerloss.power_loss(tmp_path)                      # commits are not fsynced
    assert db in rolled
    assert rows(db) == [1, 2, 3]
    assert not list(tmp_path.glob("*" + powerloss.UNDO_SUFFIX))


def test_without_power_loss_the_same_kill_keeps_the_unsynced_rows(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    write_rows(db, "fsync", 1, 3)
    write_rows(db, "process", 100, 3)
    assert rows(db) == [1, 2, 3, 100, 101, 102]


def test_a_store_that_never_synced_loses_everything_it_wrote(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    write_rows(db, "process", 1, 3)
    powerloss.power_loss(tmp_path)
    # Only the switch to WAL reached the disk (made under the default synchronous=FULL,
    # before the store sets its own): the migration that made the table did not.
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        rows(db)


@pytest.mark.parametrize("durability", ["fsync", "process"])
def test_kill_9_mid_stream_then_power_loss_keeps_a_prefix_and_fsync_keeps_every_ack(
        tmp_path: Path, durability: str) -> None:
    db = tmp_path / "s.db"
    assert write_rows(db, "fsync", 1, 3) == [1, 2, 3]   # the table and a synced start
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), durability, "4", "0", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acked: list[int] = []
    try:
        for line in child.stdout:
            acked.append(int(line))
            if len(acked) == 300:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
        assert child.stderr is not None
        child.stderr.close()
    assert len(acked) == 300
    powerloss.power_loss(tmp_path)
    kept = rows(db)
    # What survives is always a prefix of what was written (the last synced state).
    assert kept == list(range(1, len(kept) + 1))
    assert len(kept) >= 3
    if durability == "fsync":
        assert set(acked) <= set(kept)   # every acked row, whatever was in flight
    else:
        # 300 small commits stay in the WAL below the 1,000-page autocheckpoint, and with
        # synchronous=NORMAL no commit syncs it: everything acked since the last checkpoint
        # is lost (docs/reliability.md states the bound).
        assert kept == [1, 2, 3]


def test_a_child_started_with_child_env_runs_through_the_shim_untouched(
        tmp_path: Path) -> None:
    # Plain sqlite3, no install() call: only the environment arms the shim.
    script = ("import sqlite3, os, sys\n"
              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "c.execute('PRAGMA journal_mode=WAL')\n"
              "c.execute('CREATE TABLE t (v INTEGER PRIMARY KEY)')\n"
              "c.execute('INSERT INTO t VALUES (1)')\n"
              "c.execute('PRAGMA synchronous=OFF')\n"
              "c.execute('INSERT INTO t VALUES (2)')\n"
              "os._exit(0)\n")
    data = tmp_path / "data"
    data.mkdir()
    env = powerloss.child_env({"PATH": "/usr/bin:/bin"}, tmp_path / "site")
    proc = subprocess.run([sys.executable, "-c", script, str(data / "s.db")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # (Nothing may open the store between the kill and the power loss: closing a WAL
    # connection checkpoints, which would write behind the undo logs' back.)
    assert data / "s.db-wal" in powerloss.power_loss(data)
    assert rows(data / "s.db") == [1]


def test_power_loss_on_a_directory_without_undo_logs_changes_nothing(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "plain.db")
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (7)")
    conn.commit()
    conn.close()
    assert powerloss.power_loss(tmp_path) == []
    assert rows(tmp_path / "plain.db") == [7]


def test_a_truncated_undo_record_from_a_kill_mid_append_is_ignored(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"synced--" + b"unsynced")
    log = tmp_path / ("f.bin" + powerloss.UNDO_SUFFIX)
    header = powerloss._HEADER.pack(b"B", 8)
    whole = powerloss._WRITE.pack(b"W", 0, 8) + b"synced--"
    cut = powerloss._WRITE.pack(b"W", 8, 8) + b"unsy"     # the kill hit mid-record
    log.write_bytes(header + whole + cut)
    assert powerloss.power_loss(tmp_path) == [target]
    assert target.read_bytes() == b"synced--"

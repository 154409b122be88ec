"""The in-process recorder: armed by TETHER_HISTORY in a real child process, one file per
process, records the checker reads back; a malformed record fails loudly; unarmed it writes
nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tether.tools.soak.history import Append, Applied, load

CHILD = """
from tether.tools.soak import recorder
recorder.set_role("runtime")
recorder.record("append", node="n", stream="evt", frame_id="f1", epoch=1, q=1)
recorder.record("applied", node="n", stream="evt", epoch=1, q=1, session="s")
try:
    recorder.record("applied", node="n", stream="sideways", epoch=1, q=1, session="s")
except ValueError as exc:
    print("refused:", exc)
"""


def run_child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env=env, timeout=60, check=True)


def test_an_armed_process_writes_its_own_history_file(tmp_path: Path) -> None:
    out = run_child({"TETHER_HISTORY": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"})
    assert "refused:" in out.stdout and "stream must be one of" in out.stdout
    (path,) = (tmp_path / "h").glob("runtime-*.jsonl")
    records = load(path)
    assert [type(r) for r in records] == [Append, Applied]
    assert all(r.t_ns is not None for r in records)


def test_an_unarmed_process_writes_nothing(tmp_path: Path) -> None:
    out = run_child({"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "refused:" not in out.stdout  # unarmed, record() returns before any check
    assert list(tmp_path.rglob("*.jsonl")) == []

"""Failpoints (common/failpoints.py): armed through TETHER_FAILPOINTS, in real subprocesses.

Cost when unarmed (a figure, not an assertion; speed targets live in ``tether bench``):
``python -m timeit -s "from tether.common import failpoints as f" "if f.ARMED: f.hit('x')"``
measured ~21 ns per pass against ~9.5 ns for ``pass`` on the 2-core CI box; the guard is a
global load, an attribute load and a truth test, with no dict lookup and no lock.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.common import failpoints
from tether.common.failpoints import CRASH_EXIT_CODE, KNOWN_POINTS, Action, FailpointError

REPO = Path(__file__).resolve().parents[2]


def run_child(spec: str | None, body: str,
              timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter with TETHER_FAILPOINTS set to ``spec``."""
    env = {"PATH": "/usr/bin:/bin"}
    if spec is not None:
        env[failpoints.ENV_VAR] = spec
    code = "from tether.common import failpoints as fp\n" + body
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


@pytest.fixture
def restore_unarmed() -> Iterator[None]:
    yield
    failpoints.configure("")


def test_an_armed_crash_exits_with_the_failpoint_code_and_runs_no_cleanup() -> None:
    body = ("import atexit\n"
            "atexit.register(lambda: print('atexit ran', flush=True))\n"
            "print('buffered, never flushed')\n"  # stdout is a pipe: block-buffered
            "try:\n"
            "    fp.hit('outbox.after_append')\n"
            "finally:\n"
            "    print('finally ran', flush=True)\n")
    proc = run_child("outbox.after_append=crash", body)
    assert proc.returncode == CRASH_EXIT_CODE
    assert proc.stdout == ""
    assert "failpoint outbox.after_append: crash" in proc.stderr


def test_a_crash_takes_the_exit_code_it_is_given() -> None:
    proc = run_child("gateway.before_ack=crash:42", "fp.hit('gateway.before_ack')")
    assert proc.returncode == 42


def test_a_point_that_is_not_armed_passes_through_while_others_are() -> None:
    proc = run_child("gateway.before_ack=crash",
                     "fp.hit('outbox.after_append')\nprint('passed', fp.ARMED)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["passed", "True"]


def test_crash_at_n_crashes_on_the_nth_hit_and_not_before() -> None:
    body = ("for i in range(1, 10):\n"
            "    print(i, flush=True)\n"
            "    fp.hit('store.mid_migration')\n")
    proc = run_child("store.mid_migration=crash@3", body)
    assert proc.returncode == CRASH_EXIT_CODE
    assert proc.stdout.split() == ["1", "2", "3"]


def test_a_stall_sleeps_for_its_seconds_then_goes_on() -> None:
    body = ("import time\n"
            "t0 = time.monotonic()\n"
            "fp.hit('outbox.after_send')\n"
            "print(time.monotonic() - t0)\n")
    proc = run_child("outbox.after_send=stall:0.5", body)
    assert proc.returncode == 0, proc.stderr
    # A lower bound only: the stall happened. How long beyond it is the scheduler's business.
    assert float(proc.stdout) >= 0.5


def test_an_async_stall_suspends_only_the_coroutine_that_reached_it(restore_unarmed: None) -> None:
    failpoints.configure("gateway.before_ack=stall:0.3")
    ticks: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> float:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ticker(stop))
            t0 = time.monotonic()
            await failpoints.hit_async("gateway.before_ack")
            stalled_s = time.monotonic() - t0
            stop.set()
        return stalled_s

    stalled_s = asyncio.run(main())
    assert stalled_s >= 0.3
    # The loop kept running during the stall: the ticker ran well more than once.
    assert len(ticks) > 3


def test_an_async_crash_exits_the_process() -> None:
    body = ("import asyncio\n"
            "asyncio.run(fp.hit_async('bundles.mid_activation'))\n"
            "print('survived')\n")
    proc = run_child("bundles.mid_activation=crash:9@1", body)
    assert proc.returncode == 9
    assert "survived" not in proc.stdout


@pytest.mark.parametrize("spec", [
    "outbox.after_apend=crash",          # a typo must not silently arm nothing
    "outbox.after_append",               # no action
    "outbox.after_append=explode",
    "outbox.after_append=stall",         # stall without seconds
    "outbox.after_append=crash:0",
    "outbox.after_append=crash:256",
    "outbox.after_append=crash@0",
    "outbox.after_append=crash;outbox.after_append=stall:1",
])
def test_a_bad_spec_stops_the_process_at_start(spec: str) -> None:
    proc = run_child(spec, "print('started')")
    assert proc.returncode != 0
    assert "started" not in proc.stdout
    assert "FailpointError" in proc.stderr


def test_parse_reads_several_points_with_spaces_and_a_trailing_separator() -> None:
    actions = failpoints.parse(" outbox.after_append = crash ; gateway.before_ack=stall:2.5@4;")
    assert actions == {
        "outbox.after_append": Action("crash"),
        "gateway.before_ack": Action("stall", stall_s=2.5, nth=4),
    }


def test_spec_builds_the_variable_and_refuses_a_typo_before_any_child_starts() -> None:
    value = failpoints.spec({"outbox.after_append": "crash@3", "gateway.before_ack": "stall:1"})
    assert value == "outbox.after_append=crash@3;gateway.before_ack=stall:1"
    with pytest.raises(FailpointError, match=r"unknown failpoint 'outbox\.append'"):
        failpoints.spec({"outbox.append": "crash"})


def test_an_empty_or_missing_variable_leaves_everything_unarmed() -> None:
    for spec in (None, "", " ; "):
        proc = run_child(spec, "fp.hit('outbox.after_append')\nprint(fp.ARMED)")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "False"


def test_unarmed_hits_are_not_even_counted(restore_unarmed: None) -> None:
    failpoints.configure("")
    failpoints.hit("outbox.after_append")
    assert failpoints.hits("outbox.after_append") == 0
    failpoints.configure("gateway.before_ack=stall:0")
    failpoints.hit("outbox.after_append")
    assert failpoints.hits("outbox.after_append") == 1


def test_hitting_an_unregistered_name_while_armed_raises(restore_unarmed: None) -> None:
    failpoints.configure("gateway.before_ack=stall:0")
    with pytest.raises(FailpointError, match="not in KNOWN_POINTS"):
        failpoints.hit("gateway.befor_ack")


def test_a_bad_configure_leaves_the_armed_points_unchanged(restore_unarmed: None) -> None:
    failpoints.configure("gateway.before_ack=stall:0")
    with pytest.raises(FailpointError):
        failpoints.configure("gateway.before_ack=nonsense")
    assert failpoints.ARMED
    failpoints.hit("gateway.before_ack")
    assert failpoints.hits("gateway.before_ack") == 1


def test_the_registry_covers_every_point_the_issue_names() -> None:
    # issue 16: after the outbox append, after the send, before the ack, after the ack but
    # before the delete, after the apply but before the cursor commit, in the middle of a
    # migration, during bundle activation, during the handshake's ownership claim.
    for name in ("outbox.after_append", "outbox.after_send", "gateway.before_ack",
                 "outbox.after_ack_before_delete", "inbox.after_apply_before_commit",
                 "gateway.after_apply_before_commit", "store.mid_migration",
                 "bundles.mid_activation", "gateway.mid_claim"):
        assert name in KNOWN_POINTS


CALL_SITE = re.compile(r"failpoints\.hit(?:_async)?\(\s*[\"']([^\"']+)[\"']")


def test_every_call_site_in_the_code_base_names_a_registered_point() -> None:
    names: dict[str, str] = {}
    for package in ("common", "controller", "node", "sidecar", "cli", "tools", "protocol"):
        for path in (REPO / package).rglob("*.py"):
            for name in CALL_SITE.findall(path.read_text()):
                names[name] = str(path.relative_to(REPO))
    unknown = {name: where for name, where in names.items() if name not in KNOWN_POINTS}
    assert not unknown, f"failpoint call sites with unregistered names: {unknown}"


# -- crashed through: the points placed so far ----------------------------------------------

MIGRATING = r"""
import asyncio, sys
from pathlib import Path
from tether.common.sqlitedb import Database

async def main():
    db = Database(Path(sys.argv[1]), migrations=[
        "CREATE TABLE a (x INTEGER); CREATE TABLE b (y INTEGER)",
        "CREATE TABLE c (z INTEGER)"])
    await db.open()
    await db.close()
    print("migrated", flush=True)

asyncio.run(main())
"""


def store_state(path: Path) -> tuple[int, list[str]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return version, tables
    finally:
        conn.close()


@pytest.mark.parametrize("nth, committed", [
    (1, (0, [])),              # after CREATE TABLE a: migration 1 rolled back whole
    (2, (0, [])),              # after CREATE TABLE b, before user_version and COMMIT
    (3, (1, ["a", "b"])),      # inside migration 2: migration 1 stays committed
])
def test_a_crash_in_the_middle_of_a_migration_leaves_the_last_whole_version_then_resumes(
        tmp_path: Path, nth: int, committed: tuple[int, list[str]]) -> None:
    db = tmp_path / "s.db"
    body = (f"import sys\nsys.argv = ['child', {str(db)!r}]\n"
            f"exec(compile({MIGRATING!r}, 'child', 'exec'))")
    crashed = run_child(f"store.mid_migration=crash@{nth}", body)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert store_state(db) == committed
    resumed = run_child(None, body)
    assert resumed.returncode == 0, resumed.stderr
    assert store_state(db) == (2, ["a", "b", "c"])

"""The CI-sized soak (issue 16): two minutes of random faults on every proxy and kill -9 of
every process kind, seeded, then the history checker and the flat-resources check must find
nothing, and the soak must have actually broken things (a soak that injects nothing fails).
Once with one SQLite controller, once with two replicas on PostgreSQL + NATS (which are
killed too; skipped without them, failed under CI).

``make soak`` is the long one (docs/reliability.md); this is the same driver, shorter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tether.tools.servers import ServerUnavailable, find_binary
from tether.tools.soak.driver import (
    CLUSTER_KILLS,
    FAULT_KINDS,
    SINGLE_KILLS,
    Soak,
    SoakConfig,
)

from ..conftest import server_unavailable

SEED = 1616
SECONDS = 120  # "a few minutes" with its drain and the final audit


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["single", "cluster"])
def test_a_ci_sized_soak_injects_every_fault_and_kill_and_finds_no_violation(
        tmp_path: Path, mode: str) -> None:
    kill_kinds = SINGLE_KILLS
    if mode == "cluster":
        for binary in ("initdb", "postgres", "nats-server"):
            if find_binary(binary) is None:
                server_unavailable(ServerUnavailable(f"{binary} is not installed (the "
                                                     "cluster soak runs PostgreSQL and NATS)"))
        kill_kinds = CLUSTER_KILLS
    report_path = tmp_path / "soak-report.json"
    out = subprocess.run(
        [sys.executable, "-m", "tether.tools.soak", "run", "--seconds", str(SECONDS),
         "--seed", str(SEED), "--nodes", "2", "--sims", "4", "--rate", "3",
         "--fault-every", "2", "--kill-every", "7", "--root", str(tmp_path / "root"),
         "--report", str(report_path), *(["--cluster"] if mode == "cluster" else [])],
        capture_output=True, text=True, timeout=540)
    assert report_path.exists(), out.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["violations"] == 0, json.dumps(report["violation_list"][:20], indent=1)
    assert out.returncode == 0, out.stderr[-3000:]
    assert report["seed"] == SEED
    for field in ("frames", "commands", "kills", "faults", "violations"):
        assert isinstance(report[field], int)
    assert report["frames"] > 0 and report["commands"] > 0
    assert set(report["faults_by_kind"]) == set(FAULT_KINDS), report["faults_by_kind"]
    assert set(report["kills_by_kind"]) == set(kill_kinds), report["kills_by_kind"]
    assert report["drain"]["commands_pending"] == 0
    assert report["resources"]["curves"], "no resource was sampled"
    # every process kind reported its asyncio tasks, and some curve was long enough to judge
    tasks = report["resources"]["tasks"]
    kinds = {t["name"].rsplit("/", 1)[-1] if "/" in t["name"] else "controller" for t in tasks}
    assert kinds == {"controller", "runtime", "sidecar"}, tasks
    assert any(s["metric"] == "tasks" and "slope_per_min" in s
               for s in report["resources"]["slopes"]), report["resources"]["slopes"]


def test_a_soak_that_injected_nothing_is_a_violation(tmp_path: Path) -> None:
    soak = Soak(SoakConfig(seconds=1, root=tmp_path))
    soak.writer = None
    report = soak._report(run_s=1.0, total_s=1.0)
    assert report["violations"] >= 1
    assert "injected_nothing" in report["violations_by_kind"]


@pytest.mark.parametrize("violations", [0, 3])
def test_the_soak_command_exits_1_exactly_when_the_report_has_violations(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        violations: int) -> None:
    import argparse

    from tether.tools.soak import driver

    report = {"seed": 1, "mode": "single", "seconds": 1.0, "frames": 5, "commands": 2,
              "kills": 1, "faults": 1, "violations": violations,
              "violation_list": [{"kind": "lost_acked"}] * violations}

    async def fake_run(self: Soak) -> dict[str, object]:
        return report
    monkeypatch.setattr(driver.Soak, "run", fake_run)
    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    assert driver.run_from_args(parser.parse_args(["--seconds", "1"])) == (1 if violations
                                                                          else 0)
    err = capsys.readouterr().err
    assert json.loads(err.splitlines()[0])["violations"] == violations
    assert err.count("lost_acked") == violations

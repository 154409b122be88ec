"""The benchmark runs end to end in a tiny mode and prints its pinned JSON shape (never the
figures: speed is judged by the benchmark itself, not by timed assertions)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..helpers import tether_cmd


def test_bench_core_in_a_tiny_mode_writes_the_pinned_json_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(tether_cmd("bench", "core", "--nodes", "1", "--frames", "50",
                                    "--commands", "5", "--durability", "process",
                                    "--out", str(out)),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "results"}
    assert report["machine"]["cpus"] >= 1
    rows = {(r["benchmark"], r["system"], r["metric"]) for r in report["results"]}
    assert {("acked_throughput", "tether-process", "msgs_per_s"),
            ("acked_throughput", "websockets-raw", "msgs_per_s"),
            ("acked_throughput", "mosquitto-qos1", "msgs_per_s"),
            ("command_rtt", "tether-process", "p50_ms"),
            ("command_rtt", "tether-process", "p99_ms")} <= rows
    for row in report["results"]:
        assert {"benchmark", "system", "metric", "value", "unit"} <= set(row)
        if row["value"] is None:  # a peer that could not run says why, never a figure
            assert row["note"].startswith("unavailable: "), row
        else:
            assert isinstance(row["value"], int | float) and row["value"] > 0
    assert "acked_throughput" in run.stdout

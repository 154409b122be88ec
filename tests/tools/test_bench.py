"""The benchmark runs end to end in a tiny mode and writes its pinned JSON shape (never the
figures: speed is judged by the benchmark itself, not by timed assertions)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tether.tools import servers
from tether.tools.bench_util import percentile, row
from tether.tools.cluster import ClusterPlan, run_cluster

from ..helpers import tether_cmd

PINNED = {
    ("acked_throughput", "tether", "msgs_per_s"),
    ("acked_throughput", "websockets-raw", "msgs_per_s"),
    ("acked_throughput", "mosquitto-qos1", "msgs_per_s"),
    ("command_rtt", "tether", "p50_ms"),
    ("command_rtt", "tether", "p99_ms"),
    ("sessions", "tether", "sessions"),
    ("sessions", "tether", "rss_kib_per_session"),
    ("reconnect_storm", "tether", "nodes"),
    ("reconnect_storm", "tether", "seconds_to_all_online"),
    ("reconnect_storm", "tether", "lost"),
    ("hello_under_flood", "tether", "seconds_to_welcome"),
    ("hello_under_flood", "tether", "rss_mib"),
    ("cluster", "tether", "sessions"),
    ("cluster", "tether", "msgs_per_s"),
    ("cluster", "tether", "seconds_to_all_online_after_kill"),
    ("cluster", "tether", "lost"),
    ("fleet_page", "tether", "first_paint_ms"),
    ("fleet_page", "tether", "liveness_to_dom_p99_ms"),
    ("ws_fanout", "tether", "p99_ms"),
    ("job_fanout", "tether", "seconds_to_all_results"),
    ("job_fanout", "tether", "commands_per_s"),
    ("media", "aiortc-raw", "mb_per_s"),
    ("media", "tether-file", "mb_per_s"),
    ("media", "tether-file", "ratio_to_aiortc_raw"),
    ("media", "tether-relay", "mb_per_s"),
    ("media", "tether", "rss_kib_per_peer"),
    ("media", "tether", "first_frame_ms"),
}


def test_bench_tiny_writes_the_pinned_json_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench-results.json"
    run = subprocess.run(tether_cmd("bench", "--tiny", "--out", str(out)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "results"}
    assert report["machine"]["cpus"] >= 1 and report["machine"]["size"] == "tiny"
    rows = {(r["benchmark"], r["system"], r["metric"]) for r in report["results"]}
    assert rows >= PINNED, PINNED - rows
    # the floor under a session is measured beside it, on the same stack and on websockets
    assert {("sessions", "uvicorn-ws-idle", "rss_kib_per_session"),
            ("sessions", "websockets-ws-idle", "rss_kib_per_session")} <= rows
    rates = {r["rate_per_s"] for r in report["results"] if r["benchmark"] == "command_rtt"}
    assert rates == {100}  # the command path's rate is job_fanout's (one job, every node)
    jobs = {r["metric"]: r for r in report["results"] if r["benchmark"] == "job_fanout"}
    assert all(r["succeeded"] == r["nodes"] == 20 and r["job_state"] == "done"
               for r in jobs.values()), jobs
    for r in report["results"]:
        assert {"benchmark", "system", "metric", "value", "unit"} <= set(r)
        if r["value"] is None:  # a peer or plane that could not run says why, never a figure
            assert r["note"].startswith(("unavailable: ", "not yet: ", "not measured yet: ")), r
        else:
            assert isinstance(r["value"], int | float) and r["value"] >= 0, r
    tp = next(r for r in report["results"] if (r["benchmark"], r["system"], r["metric"]) ==
              ("acked_throughput", "tether", "msgs_per_s"))
    assert len(tp["runs"]) == 3 and tp["value"] == max(tp["runs"])  # credited with its best
    media = {(r["system"], r["metric"]): r for r in report["results"]
             if r["benchmark"] == "media"}
    raw, tether = media[("aiortc-raw", "mb_per_s")], media[("tether-file", "mb_per_s")]
    assert raw["value"] > 0 and tether["value"] > 0  # measured, not left null
    assert raw["bytes"] == tether["bytes"] == 1 << 20  # the same bytes in both modes
    storm = {r["metric"]: r for r in report["results"] if r["benchmark"] == "reconnect_storm"}
    assert storm["lost"]["value"] == 0 and storm["duplicate_sessions"]["value"] == 0
    assert storm["nodes"]["value"] > 0 and storm["nodes"]["zero_loss"]["ok"]
    assert "acked_throughput" in run.stdout and "reconnect_storm" in run.stdout
    flood = {r["metric"]: r for r in report["results"] if r["benchmark"] == "hello_under_flood"}
    assert flood["seconds_to_welcome"]["value"] is not None  # welcomed through the flood
    assert flood["seconds_to_welcome"]["silent_still_open"] == 40
    cluster = {r["metric"]: r for r in report["results"] if r["benchmark"] == "cluster"}
    assert all(r["replicas"] == 3 for r in cluster.values()), cluster
    if cluster["lost"]["value"] is not None:  # PostgreSQL, NATS and HAProxy all started
        assert cluster["lost"]["value"] == 0 and cluster["sessions"]["value"] > 0, cluster


def test_a_row_without_a_figure_must_say_why() -> None:
    with pytest.raises(ValueError, match="no value and no note"):
        row("acked_throughput", "mosquitto-qos1", "msgs_per_s", None, "msgs/s")
    assert row("media", "tether", "x", None, "MB/s", note="not yet: later")["value"] is None


def test_percentiles_are_nearest_rank_and_none_without_samples() -> None:
    assert percentile([], 99) is None
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


async def test_cluster_rows_say_why_when_a_server_cannot_start(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(servers, "find_binary", lambda name: None)
    rows = await run_cluster(tmp_path, ClusterPlan(sessions=3, events_per_node=1))
    assert [r["metric"] for r in rows] == ["sessions", "msgs_per_s",
                                           "seconds_to_all_online_after_kill", "lost"]
    for r in rows:
        assert (r["benchmark"], r["system"], r["replicas"], r["value"]) == (
            "cluster", "tether", 3, None), r
        assert r["note"].startswith("unavailable: postgresql is not installed"), r

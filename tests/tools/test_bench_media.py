"""The media benchmark's plumbing: both ends run as their own processes, move the same
bytes, and the rows say what they measured (never the figures: speed is the bench's)."""

from __future__ import annotations

from pathlib import Path

from tether.tools.bench_media import CHUNK, MediaPlan, run_media


async def test_the_media_rows_measure_raw_aiortc_and_the_file_subflow_on_the_same_bytes(
        tmp_path: Path) -> None:
    rows = await run_media(tmp_path, MediaPlan(file_bytes=300_000, runs=1, peers=2,
                                               cycles=2))
    by_key = {(r["system"], r["metric"]): r for r in rows}
    raw, tether = by_key[("aiortc-raw", "mb_per_s")], by_key[("tether-file", "mb_per_s")]
    for r in (raw, tether):
        assert r["value"] > 0 and r["bytes"] == 300_000 and r["chunk_bytes"] == CHUNK
        assert r["processes"] == 2 and r["sender_cpu_s"] > 0 and r["receiver_cpu_s"] > 0
    assert raw["buffered_low_bytes"] == tether["buffered_low_bytes"]
    ratio = by_key[("tether-file", "ratio_to_aiortc_raw")]["value"]
    assert ratio == round(tether["value"] / raw["value"], 3)
    assert by_key[("tether-file", "ratio_to_aiortc_raw")]["cpu_ratio"] > 0
    later = [r for r in rows if r["value"] is None]
    assert {(r["system"], r["metric"]) for r in later} <= {("tether", "first_frame_ms")}
    assert all(r["note"].startswith("not measured yet: ") for r in later)
    # the node rows: the same bytes through the relay between two node processes, RSS
    relay = by_key[("tether-relay", "mb_per_s")]
    assert relay["value"] > 0 and relay["bytes"] == 300_000
    per_peer = by_key[("tether", "rss_kib_per_peer")]
    assert per_peer["peers"] == 2 and per_peer["frames"] > 0
    flat = by_key[("tether", "rss_kib_growth_open_close")]
    assert flat["cycles"] == 2 and flat["bound_kib"] > 0 and "flat" in flat
    # what arrived is what was sent, in both modes
    source = (tmp_path / "media-source.bin").read_bytes()
    received = sorted(tmp_path.glob("media-*/bench.bin"))
    assert len(received) == 2 and all(p.read_bytes() == source for p in received)

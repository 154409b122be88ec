"""The "resources stay flat" check: a slope over the run's second half, judged on rate and
growth together, one series per process incarnation."""

from __future__ import annotations

import os
import random

from tether.tools.soak.resources import (
    BOUNDS,
    Sampler,
    Series,
    flat_violations,
    slope_per_min,
)


def series(metric: str, per_s: float, *, seconds: int = 120, base: float = 100.0,
           noise: float = 0.0) -> Series:
    s = Series("p", 1)
    for t in range(0, seconds, 2):
        s.add(metric, float(t), base + per_s * t + (noise if t % 4 else -noise))
    return s


def test_the_slope_is_per_minute() -> None:
    assert slope_per_min([(0.0, 0.0), (30.0, 1.0), (60.0, 2.0)]) == 2.0
    assert slope_per_min([(5.0, 1.0), (5.0, 9.0)]) == 0.0


def test_a_steady_leak_is_a_violation_with_its_figure() -> None:
    leak = series("fds", 1.0)  # one descriptor a second
    violations, checked = flat_violations([leak], run_s=120)
    assert [v["metric"] for v in violations] == ["fds"]
    assert violations[0]["slope_per_min"] == 60.0
    assert "60/min" in str(violations[0]["detail"])
    assert checked[0]["bound_per_min"] == BOUNDS["fds"]


def test_a_flat_curve_with_noise_and_a_warm_up_passes() -> None:
    warm = Series("p", 1)
    for t in range(0, 120, 2):
        warm.add("rss_bytes", float(t), 50e6 if t < 40 else 80e6 + (1e6 if t % 4 else 0))
    noisy_fds = series("fds", 0.0, noise=2.0)
    violations, _ = flat_violations([warm, noisy_fds], run_s=120)
    assert violations == []


def test_a_fast_rate_that_grows_little_is_noise_on_a_short_run() -> None:
    violations, _ = flat_violations([series("fds", 3 / 60, seconds=60)], run_s=60)
    assert violations == []


def test_a_series_too_short_in_the_second_half_is_skipped_not_judged() -> None:
    short = series("rss_bytes", 1e6, seconds=20)
    violations, checked = flat_violations([short], run_s=120)
    assert violations == [] and checked[0]["skipped"]


def test_a_dip_and_a_return_to_an_earlier_level_is_not_a_leak() -> None:
    s = Series("replica", 1)
    levels = [32] * 10 + [17] * 10 + [23] * 10 + [31] * 10  # reconnects after kills
    for i, v in enumerate(levels):
        s.add("fds", float(i * 2), float(v))
    violations, checked = flat_violations([s], run_s=80)
    assert violations == []
    assert checked[0]["above_first_half_peak"] is False


def test_a_process_restarted_late_is_not_judged_on_its_start_up() -> None:
    s = Series("runtime", 2)
    s.add("fds", 36.0, 3.0)  # sampled while it was opening its files
    for t in range(38, 120, 2):
        s.add("fds", float(t), 21.0 if t != 56 else 29.0)
    violations, _ = flat_violations([s], run_s=120)
    assert violations == []


def test_a_replica_restarted_late_climbing_back_to_its_predecessors_level_is_not_a_leak(
        ) -> None:
    # the cluster soak's figures: r-1 restarted at 795 s of 900 took its nodes and its
    # pool connections back (21 -> 37 fds) after its predecessor had held 46
    before, after = Series("r-1", 1), Series("r-1", 2)
    for t in range(0, 790, 2):
        before.add("fds", float(t), 46.0 if t % 100 == 0 else 40.0)
    for i, t in enumerate(range(795, 871, 2)):
        after.add("fds", float(t), 21.0 + i * 16 / 37)
    violations, checked = flat_violations([before, after], run_s=900)
    assert violations == []
    (late,) = [c for c in checked if c["pid"] == 2]
    assert late["above_first_half_peak"] is False
    alone, _ = flat_violations([after], run_s=900)  # judged against its own start only
    assert [v["metric"] for v in alone] == ["fds"]
    leaking = Series("r-1", 3)  # past every level any incarnation held: a leak still
    for i, t in enumerate(range(795, 871, 2)):
        leaking.add("fds", float(t), 40.0 + i)
    violations, _ = flat_violations([before, leaking], run_s=900)
    assert [v["pid"] for v in violations] == [3]


def test_a_task_count_that_follows_sessions_and_requests_is_flat() -> None:
    rng = random.Random(16)
    s = Series("controller", 1)
    for t in range(0, 600, 2):  # ten minutes: reconnect storms dip it, requests add a few
        dip = -30 if 200 <= t < 220 or 450 <= t < 470 else 0
        s.add("tasks", float(t), 90.0 + dip + rng.randint(-8, 8))
    violations, checked = flat_violations([s], run_s=600)
    assert violations == [], violations
    assert checked[0]["metric"] == "tasks" and "slope_per_min" in checked[0]


def test_a_task_leaked_every_second_is_a_violation_with_its_figure() -> None:
    leak = series("tasks", 1.0, base=80.0, noise=5.0)
    violations, _ = flat_violations([leak], run_s=120)
    assert [v["metric"] for v in violations] == ["tasks"]
    assert 55 < float(str(violations[0]["slope_per_min"])) < 65
    assert "tasks grows" in str(violations[0]["detail"])


def test_a_task_leaked_every_second_fails_even_the_one_minute_ci_soak() -> None:
    violations, _ = flat_violations([series("tasks", 1.0, seconds=60, noise=3.0)], run_s=60)
    assert [v["metric"] for v in violations] == ["tasks"]


def test_a_reported_task_count_joins_the_curve_of_its_incarnation() -> None:
    sampler = Sampler()
    sampler.process("me", os.getpid())
    sampler.tasks("me", os.getpid(), 7)
    sampler.tasks("me", 1, 3)  # another incarnation of the same process name
    mine = sampler.series[("me", os.getpid())]
    assert set(mine.points) == {"rss_bytes", "fds", "tasks"}
    assert mine.points["tasks"][0][1] == 7.0
    assert [v for _, v in sampler.series[("me", 1)].points["tasks"]] == [3.0]

"""Run every atheris harness (``fuzz_*.py``) bounded in time, as a subprocess, from its
committed seed corpus; and replay that corpus, and every reproducer kept under
``crashes/``, through the same checks in process (no atheris needed for those).

A harness fails the test when libFuzzer reports a crash: an exception other than the
documented ones (BadFrame, FrameTooLarge), a broken property, an input that runs longer
than ``-timeout`` (a hang), or a process over ``-rss_limit_mb`` (a memory blow-up). The
failure names the reproducer file and the command that replays it.

Budget: ``TETHER_FUZZ_SECONDS`` per harness (default 20; CI total about a minute);
``TETHER_FUZZ_SEED`` fixes libFuzzer's seed (default 1; 0 draws a new one each run);
``TETHER_FUZZ_ARTIFACTS`` keeps reproducers in that directory instead of the test's tmp.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from . import targets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"  # reproducers of fixed crashes, replayed forever

FUZZ_SECONDS = int(os.environ.get("TETHER_FUZZ_SECONDS", "20"))
FUZZ_SEED = int(os.environ.get("TETHER_FUZZ_SEED", "1"))
RSS_LIMIT_MB = 1024  # a harness is ~50-150 MB; a blow-up goes far past this
INPUT_TIMEOUT_S = 10  # one input running longer is a hang (_harness.py raises in it)
MAX_INPUT_BYTES = 8192

# harness name -> the check it runs (the same function the in-process replay calls)
HARNESSES = {"codec": "check_codec", "bodies": "check_bodies", "rest": "check_rest"}
DICTS = {"codec": "codec.dict", "bodies": "codec.dict", "rest": "rest.dict"}


def test_every_harness_has_a_seed_corpus_and_a_check() -> None:
    on_disk = {p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py")}
    assert on_disk == set(HARNESSES)
    for name in HARNESSES:
        assert any((CORPUS / name).iterdir()), f"no seeds in {CORPUS / name}"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install -e '.[test]')")
@pytest.mark.timeout(FUZZ_SECONDS + 120)
@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_the_harness_finds_no_crash_within_its_time_budget(name: str, tmp_path: Path) -> None:
    artifacts = Path(os.environ.get("TETHER_FUZZ_ARTIFACTS") or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    new_corpus = tmp_path / "corpus"  # libFuzzer adds inputs to the first directory only
    new_corpus.mkdir()
    argv = [sys.executable, str(HERE / f"fuzz_{name}.py"),
            f"-max_total_time={FUZZ_SECONDS}", f"-seed={FUZZ_SEED}",
            f"-rss_limit_mb={RSS_LIMIT_MB}", "-timeout=0",
            f"-max_len={MAX_INPUT_BYTES}", f"-artifact_prefix={artifacts}/{name}-",
            f"-dict={HERE / 'dicts' / DICTS[name]}", "-print_final_stats=1",
            str(new_corpus), str(CORPUS / name)]
    env = {**os.environ, "TETHER_FUZZ_INPUT_TIMEOUT_S": str(INPUT_TIMEOUT_S)}
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=FUZZ_SECONDS + 90, check=False)
    stats = [line for line in proc.stderr.splitlines()
             if line.startswith(("stat::number_of_executed_units", "stat::peak_rss_mb"))]
    print(f"fuzz_{name}: exit {proc.returncode}; {'; '.join(stats)}")
    if proc.returncode != 0:
        found = sorted(artifacts.glob(f"{name}-*"))
        replay = [f"{shlex.quote(sys.executable)} tests/fuzz/fuzz_{name}.py {shlex.quote(str(f))}"
                  for f in found]
        pytest.fail(f"fuzz_{name} exited {proc.returncode}; reproducer(s): "
                    f"{[str(f) for f in found]}\nreplay with:\n  " + "\n  ".join(replay)
                    + "\nthen copy the file to tests/fuzz/crashes/" + name + "/ once fixed"
                    + "\n--- libFuzzer's last lines ---\n"
                    + "\n".join(proc.stderr.splitlines()[-60:]))


def _inputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []


REPLAY = [(name, path) for name in sorted(HARNESSES)
          for path in _inputs(CORPUS / name) + _inputs(CRASHES / name)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("name", "path"), REPLAY,
                         ids=[f"{n}/{p.parent.name}/{p.name}" for n, p in REPLAY])
def test_every_seed_and_every_past_crash_is_handled(name: str, path: Path) -> None:
    if name == "rest":
        from . import targets_asgi

        check = targets_asgi.check_rest
    else:
        check = getattr(targets, HARNESSES[name])
    check(path.read_bytes())

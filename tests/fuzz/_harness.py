"""What every atheris harness does: put the repository on ``sys.path``, import the targets
with coverage instrumentation, then hand one check function to libFuzzer.

A harness is run as a script (``python tests/fuzz/fuzz_codec.py [libFuzzer flags] DIRS``);
``test_atheris.py`` runs each one bounded in time. An input for which the check raises is a
crash: libFuzzer writes it to ``-artifact_prefix`` and exits non-zero.

Hangs: one input running over ``TETHER_FUZZ_INPUT_TIMEOUT_S`` (default 10) raises
TimeoutError from a Python SIGALRM handler, so it is a crash with its reproducer. Run with
libFuzzer's own ``-timeout=0``: its periodic SIGALRM, with Python embedded, now and then
killed the process outright (exit -14, no reproducer).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(target: str, *, module: str = "targets",
        instrument: Sequence[str] = ("tether.protocol",)) -> None:
    """Fuzz ``tests.fuzz.<module>.<target>`` (a ``check_*(data: bytes)``), instrumenting
    ``instrument`` (module prefixes) and that module itself."""
    import atheris

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=[*instrument, f"tests.fuzz.{module}"]):
        targets = importlib.import_module(f"tests.fuzz.{module}")
    check: Callable[[bytes], None] = getattr(targets, target)
    timeout_s = float(os.environ.get("TETHER_FUZZ_INPUT_TIMEOUT_S", "10"))

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"one input ran over {timeout_s:g} s: a hang")

    def one_input(data: bytes) -> None:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            check(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    signal.signal(signal.SIGALRM, on_alarm)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

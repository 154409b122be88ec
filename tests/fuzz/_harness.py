"""What every atheris harness does: put the repository on ``sys.path``, import the targets
with coverage instrumentation, then hand one check function to libFuzzer.

A harness is run as a script (``python tests/fuzz/fuzz_codec.py [libFuzzer flags] DIRS``);
``test_atheris.py`` runs each one bounded in time. An input for which the check raises is a
crash: libFuzzer writes it to ``-artifact_prefix`` and exits non-zero.
"""

from __future__ import annotations

import importlib
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
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()

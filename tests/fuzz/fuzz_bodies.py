"""atheris harness: every typed body in BODY_TYPES, fed maps decoded by msgpack or JSON the way
a hostile peer would send them, and the value rules (plain) over the same maps.

Run: ``python tests/fuzz/fuzz_bodies.py -max_total_time=20 OUT_DIR tests/fuzz/corpus/bodies``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run

if __name__ == "__main__":
    run("check_bodies")

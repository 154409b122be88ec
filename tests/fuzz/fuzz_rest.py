"""atheris harness: the controller's REST bodies and query strings through the real app in
process: the unauthenticated enroll body (with and without Content-Length), the operator's
join-token and command bodies, and the read endpoints' query strings.

Run: ``python tests/fuzz/fuzz_rest.py -max_total_time=20 OUT_DIR tests/fuzz/corpus/rest``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run

if __name__ == "__main__":
    run("check_rest", module="targets_asgi",
        instrument=("tether.protocol", "tether.controller.api", "tests.fuzz.asgi"))

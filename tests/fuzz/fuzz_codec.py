"""atheris harness: every decoder a peer's bytes reach before authentication (msgpack, JSON,
the local link's framing) and what a receiver does next with a decoded frame (unbatch, every
typed body, the value rules).

Run: ``python tests/fuzz/fuzz_codec.py -max_total_time=20 OUT_DIR tests/fuzz/corpus/codec``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run

if __name__ == "__main__":
    run("check_codec")

"""``python -m tether.tools.soak check HISTORY.jsonl...``: run the history checker on files.
``python -m tether.tools.soak run --seconds S [--cluster] [--seed N] [--report FILE]``: the
fault-injecting soak (:mod:`tether.tools.soak.driver`; exit 1 when it found violations).

Prints each violation as one JSON object per line on stdout, then a one-line summary on
stderr; exit 0 when the promises held, 1 when any violation was found, 2 on a usage error or
an unreadable history (the message names the line).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .checker import check
from .driver import add_arguments, run_from_args
from .history import HistoryError, load


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether.tools.soak")
    sub = parser.add_subparsers(dest="command", required=True)
    check_parser = sub.add_parser("check", help="check history files (merged by t_ns)")
    check_parser.add_argument("paths", nargs="+", type=Path)
    run_parser = sub.add_parser("run", help="the fault-injecting soak; writes a report")
    add_arguments(run_parser)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_from_args(args)
    try:
        records = load(*args.paths)
    except (OSError, HistoryError) as exc:
        print(f"error: cannot read the history: {exc}", file=sys.stderr)
        return 2
    violations = check(records)
    for violation in violations:
        print(violation.to_json())
    by_kind = Counter(violation.kind for violation in violations)
    summary = ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items())) or "none"
    print(f"{len(records)} records, {len(violations)} violations ({summary})", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

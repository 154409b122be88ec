"""How a failed command says so: one line on stderr, or with ``--json`` a JSON error object.

Rule: with ``--json``, stderr gets exactly one line, ``{"error": {"code", "message"}}``,
the shape the REST API answers errors with (docs/protocol.md), and the exit status is
still non-zero (1 failure, 2 usage). ``code`` is the controller's own code when the
controller refused (``not_found``, ``forbidden``...), else the CLI's (``usage_error``,
``unreachable``, ``tls_error``, ``cli_error``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn


def print_error(args: argparse.Namespace | None, code: str, message: str,
                exit_code: int) -> int:
    """Write the error for ``args`` (module Rule) and return ``exit_code`` (never 0)."""
    exit_code = exit_code or 1
    if args is not None and getattr(args, "json", False) is True:
        print(json.dumps({"error": {"code": code, "message": message}}), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return exit_code


class JsonErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors follow the module Rule when ``--json`` is on
    the command line (subcommand parsers are of the same class: argparse makes them so)."""

    json_requested = False  # set by cli/main.py's main() from the raw argv, before parsing

    def error(self, message: str) -> NoReturn:
        if JsonErrorParser.json_requested:
            print(json.dumps({"error": {"code": "usage_error",
                                        "message": f"{self.prog}: {message}"}}),
                  file=sys.stderr)
            raise SystemExit(2)
        super().error(message)

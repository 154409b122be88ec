"""``tether rollout start|status|list|pause|resume|abort``: staged rollouts of a published
bundle version (docs/protocol.md "Rollouts", docs/operations.md "Running a rollout").

``start`` builds the ``POST /api/v1/rollouts`` body from flags: ``--ring NAME:PERCENT``
(cumulative, ``10`` or ``10%``) or ``--ring NAME:N1,N2`` (explicit nodes; a node whose id
is all digits is written with a trailing comma, ``canary:42,``), in order, repeatable;
``--selector k=v`` (repeatable) picks the nodes the percent rings are taken from. The
controller checks everything (400 names the field); the CLI only splits the flags.
``status ID`` prints the state, the machine-readable why, what a running ring waits for,
and each node; ``--json`` prints the controller's answer as it is.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from tether.common.terminal import terminal_safe

from .client import CliError
from .operator import api_from, parse_labels, print_table


def parse_ring(text: str) -> dict[str, Any]:
    """``NAME:PERCENT`` or ``NAME:N1,N2`` as a ring of the request (module docstring)."""
    name, sep, rest = text.partition(":")
    if not sep or not name or not rest:
        raise CliError(f"bad --ring {text!r}: use NAME:PERCENT or NAME:NODE1,NODE2", 2)
    if "," not in rest:
        try:
            return {"name": name, "percent": float(rest.removesuffix("%"))}
        except ValueError:
            pass
    return {"name": name, "nodes": [n for n in rest.split(",") if n]}


def add_rollout_parser(nouns: Any, operator_flags: Callable[..., None]) -> None:
    """The ``rollout`` group (``nouns`` is cli/main.py's subparsers)."""
    group = nouns.add_parser("rollout", help="staged rollouts of a published bundle "
                                             "version").add_subparsers(dest="verb",
                                                                       required=True)
    start = group.add_parser("start", help="start a rollout, ring by ring")
    start.add_argument("--bundle", required=True, help="the bundle's name")
    start.add_argument("--version", required=True, type=int, help="its published version")
    start.add_argument("--selector", action="append", default=[], metavar="K=V",
                       help="only nodes with this label (repeatable; all must hold)")
    start.add_argument("--ring", action="append", required=True, metavar="NAME:SPEC",
                       help="NAME:PERCENT (cumulative, of the selected nodes) or "
                            "NAME:N1,N2 (those nodes); in order, repeatable")
    start.add_argument("--max-unavailable", type=int, default=1,
                       help="nodes of a ring mid-update at once (default 1)")
    start.add_argument("--probation-s", type=float, default=30.0,
                       help="how long a new version must stay healthy on a node "
                            "(default 30)")
    start.add_argument("--failure-threshold", type=int, default=0,
                       help="nodes that may fail before --on-failure trips (default 0)")
    start.add_argument("--on-failure", choices=("halt", "rollback", "pause"),
                       default="halt", help="what a failure past the threshold does")
    start.add_argument("--max-failed-starts", type=int, default=None,
                       help="failed starts within probation after which a node rolls "
                            "back on its own (default 3)")
    start.add_argument("--force", action="store_true",
                       help="a runtime bundle: update even while live media runs (else "
                            "the node defers it)")
    operator_flags(start)
    listing = group.add_parser("list", help="recent rollouts, newest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many")
    operator_flags(listing)
    for verb, text in (("status", "a rollout: its state, why, rings and each node"),
                       ("pause", "no new offers until resumed"),
                       ("resume", "go on (the failures so far are accepted)"),
                       ("abort", "stop for good; offers not yet received are cancelled")):
        p = group.add_parser(verb, help=text)
        p.add_argument("rollout_id", help="the rollout's id (r_...)")
        operator_flags(p)


def start_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "bundle": args.bundle, "version": args.version,
        "selector": parse_labels(args.selector), "rings": [parse_ring(r) for r in args.ring],
        "max_unavailable": args.max_unavailable, "probation_s": args.probation_s,
        "failure_threshold": args.failure_threshold, "on_failure": args.on_failure}
    if args.force:
        body["force"] = True
    if args.max_failed_starts is not None:
        body["max_failed_starts"] = args.max_failed_starts
    return body


def print_rollout(view: dict[str, Any]) -> None:
    for key in ("rollout_id", "state", "bundle", "version", "on_failure",
                "failure_threshold", "max_unavailable", "created_at", "finished_at"):
        value = view.get(key)
        print(f"{key:<18} {terminal_safe(value) if value is not None else '-'}")
    ring = view.get("ring") or {}
    print(f"{'ring':<18} {ring.get('index')} ({terminal_safe(ring.get('name'))}) of "
          f"{len(view.get('rings') or [])}")
    print(f"{'counts':<18} "
          + (", ".join(f"{k} {v}" for k, v in (view.get("counts") or {}).items()) or "-"))
    for key in ("why", "waiting"):
        if view.get(key):
            print(f"{key:<18} {terminal_safe(json.dumps(view[key], sort_keys=True))}")
    rows = []
    for node_id, n in (view.get("nodes") or {}).items():
        back = n.get("rollback")
        rows.append({"node": node_id, "ring": n.get("ring"), "state": n.get("state"),
                     "version": n.get("version"), "active": n.get("active"),
                     "connected": n.get("connected"),
                     "rollback": None if not back else f"{back.get('version')} "
                                                      f"{back.get('state')}",
                     "reason": terminal_safe(n.get("reason") or "")[:80]})
    print_table(rows, ["node", "ring", "state", "version", "active", "connected",
                       "rollback", "reason"])


def rollout_command(args: argparse.Namespace) -> int:
    """``tether rollout ...``; exit 0, or the CLI's error exit for a refusal."""
    api = api_from(args)
    if args.verb == "list":
        items = api.get("/api/v1/rollouts", params={"limit": args.limit})["items"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        print_table([{"rollout": r["rollout_id"], "state": r["state"],
                      "bundle": f"{r['bundle']} {r['version']}",
                      "ring": (r.get("ring") or {}).get("name"),
                      "created": r.get("created_at"),
                      "counts": ", ".join(f"{k} {v}" for k, v in r["counts"].items())}
                     for r in items], ["rollout", "state", "bundle", "ring", "created",
                                       "counts"])
        return 0
    if args.verb == "start":
        view = api.post("/api/v1/rollouts", json=start_body(args))
    elif args.verb == "status":
        view = api.get(f"/api/v1/rollouts/{args.rollout_id}")
    else:
        view = api.post(f"/api/v1/rollouts/{args.rollout_id}/{args.verb}")
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print_rollout(view)
    return 0

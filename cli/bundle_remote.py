"""``tether bundle publish FILE`` and ``tether bundle list``: the controller's side of
bundles (docs/protocol.md §8 ``/api/v1/bundles``). The local verbs (``keygen``, ``build``,
``verify``) live in cli/bundle.py; both register under the one ``bundle`` group.

``publish`` streams the file as the request body (never read whole into memory) and
prints the name, version and sha256 the controller stored (201: published; 200: the same
file was already published, nothing changed). ``--max-bundle-bytes`` and
``--max-bundle-bytes-total`` are ``tether controller serve``'s limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import CliError
from .operator import api_from, print_table

REMOTE_VERBS = frozenset({"publish", "list"})
PUBLISH_TIMEOUT_S = 600.0  # a 256 MiB bundle over a slow link


def add_remote_bundle_verbs(bundle: Any, operator_flags: Callable[..., None]) -> None:
    """Add ``publish`` and ``list`` to the ``bundle`` group's subparsers (``bundle`` is
    what ``add_subparsers`` returned; ``operator_flags`` is cli/main.py's
    ``_operator_flags``)."""
    pub = bundle.add_parser("publish", help="upload a bundle file to the controller "
                                            "(POST /api/v1/bundles)")
    pub.add_argument("file", type=Path, help="the bundle file (tether bundle build --out)")
    operator_flags(pub)
    blist = bundle.add_parser("list", help="bundles published on the controller, newest "
                                           "first")
    blist.add_argument("--name", help="only this bundle's versions")
    blist.add_argument("--limit", type=int, default=100, help="at most this many")
    operator_flags(blist)


def add_controller_bundle_arguments(serve: argparse.ArgumentParser) -> None:
    """``tether controller serve``'s bundle limits (ControllerConfig)."""
    serve.add_argument("--max-bundle-bytes", type=int,
                       default=int(os.environ.get("TETHER_MAX_BUNDLE_BYTES", 256 << 20)),
                       help="one bundle file at most this big; a publish over it is 413 "
                            "and nothing is stored (default 256 MiB)")
    serve.add_argument("--max-bundle-bytes-total", type=int,
                       default=int(os.environ.get("TETHER_MAX_BUNDLE_BYTES_TOTAL", 8 << 30)),
                       help="all published bundles together at most this (in the store; "
                            "default 8 GiB; 0: no quota)")


def controller_bundle_config(args: argparse.Namespace) -> dict[str, Any]:
    """ControllerConfig keyword arguments from :func:`add_controller_bundle_arguments`."""
    if args.max_bundle_bytes < 1 or args.max_bundle_bytes_total < 0:
        raise CliError("--max-bundle-bytes must be at least 1 and --max-bundle-bytes-total "
                       "at least 0", 2)
    return {"max_bundle_bytes": args.max_bundle_bytes,
            "max_bundle_bytes_total": args.max_bundle_bytes_total}


def bundle_remote_command(args: argparse.Namespace) -> int:
    """``tether bundle publish|list``."""
    api = api_from(args)
    if args.verb == "publish":
        path: Path = args.file
        try:
            file = path.open("rb")
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", 2) from None
        with file:
            out = dataclasses.replace(api, timeout_s=PUBLISH_TIMEOUT_S).post(
                "/api/v1/bundles", content=file,
                headers={"Content-Type": "application/octet-stream"})
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"published {out['name']} version {out['version']}")
            print(f"sha256 {out['sha256']}  size {out['size']}")
        return 0
    params: dict[str, Any] = {"limit": args.limit}
    if args.name:
        params["name"] = args.name
    items = api.get("/api/v1/bundles", params=params)["items"]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    print_table([{"name": b["name"], "version": b["version"], "kind": b["kind"],
                  "size": b["size"], "sha256": b["sha256"][:16],
                  "published": b.get("published_at"), "by": b.get("publisher")}
                 for b in items],
                ["name", "version", "kind", "size", "sha256", "published", "by"])
    return 0

"""``tether sim``: a fleet of simulated nodes, never mixed into a live fleet by accident.

Rule 1: without ``--url``, sim starts its own controller (a child process on a free
loopback port, its data in a temporary directory) and removes both when done; neither
``TETHER_URL`` nor a CLI context is enough to point it at a real controller, only the flag.
Rule 2: with ``--url`` and ``--cleanup``, the nodes it enrolled (``PREFIX-0`` ...) are
deleted afterwards through ``DELETE /api/v1/nodes/{id}``; a controller without that route
(404/405) is said in one line, naming the nodes left behind.
The child controller is this process's to own: started, watched, then SIGTERM, and SIGKILL
after 10 s, and awaited.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from .client import Api, CliError
from .demo import _tether, _wait_for
from .render import human


@contextlib.contextmanager
def own_controller() -> Iterator[tuple[str, str]]:
    """A controller in a temporary data dir for as long as the block runs: yields its
    (url, admin token). Its log is kept in the data dir and shown when it fails to start."""
    with tempfile.TemporaryDirectory(prefix="tether-sim-") as tmp:
        data_dir = Path(tmp) / "controller"
        data_dir.mkdir()
        log = (data_dir / "controller.log").open("wb")
        proc = subprocess.Popen(_tether("controller", "serve", "--data-dir", str(data_dir),
                                        "--port", "0", "--durability", "process"),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                _wait_for(lambda: (data_dir / "controller.url").exists(),
                          "the simulation's own controller", [proc])
            except CliError:
                log.flush()
                tail = (data_dir / "controller.log").read_text(errors="replace")[-2000:]
                raise CliError(f"the simulation's controller did not start:\n{tail}") from None
            yield ((data_dir / "controller.url").read_text().strip(),
                   (data_dir / "admin.token").read_text().strip())
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def sim_node_ids(prefix: str, count: int) -> list[str]:
    """The ids ``tools/fleet.py`` enrolls: ``PREFIX-0`` to ``PREFIX-(count-1)``."""
    return [f"{prefix}-{i}" for i in range(count)]


def cleanup_nodes(api: Api, node_ids: list[str]) -> tuple[list[str], str | None]:
    """Delete ``node_ids``; returns (the ones deleted, the reason the rest were not, if
    any). A controller without ``DELETE /api/v1/nodes/{id}`` stops it at the first node."""

    deleted: list[str] = []
    with httpx.Client(base_url=api.url, timeout=api.timeout_s, verify=api.verify,
                      headers={"Authorization": f"Bearer {api.token}"}) as client:
        for node_id in node_ids:
            try:
                resp = client.delete(f"/api/v1/nodes/{node_id}")
            except httpx.HTTPError as exc:
                return deleted, f"cannot reach the controller at {api.url} ({exc})"
            if resp.status_code in (404, 405) and not deleted and _no_route(resp):
                return deleted, ("this controller cannot delete nodes (no DELETE "
                                 "/api/v1/nodes/{id}; upgrade it), so the simulated nodes "
                                 f"{node_ids[0]} to {node_ids[-1]} stay")
            if resp.status_code == 404:
                continue  # already gone
            if resp.status_code >= 400:
                return deleted, f"HTTP {resp.status_code} deleting {node_id}: {resp.text[:200]}"
            deleted.append(node_id)
    return deleted, None


def _no_route(resp: Any) -> bool:
    """A 405, or a 404 that is not the API's own ``not_found`` for a node."""
    if resp.status_code == 405:
        return True
    try:
        return bool(resp.json()["error"]["code"] != "not_found")
    except (ValueError, KeyError, TypeError):
        return True


def run_sim(args: argparse.Namespace, api_from: Any) -> int:
    """``tether sim`` (module Rules); exit 0 when the zero-loss check holds, else 1."""
    from tether.tools.fleet import simulate

    logging.getLogger("tether.sidecar").setLevel(logging.WARNING)  # one line per node
    with contextlib.ExitStack() as stack:
        if args.url:
            api = api_from(args)
        else:
            if args.cleanup:
                raise CliError("--cleanup is for --url: without it sim runs its own "
                               "controller and removes everything itself", 2)
            url, token = stack.enter_context(own_controller())
            api = Api(url=url, token=token)
        try:
            report = asyncio.run(simulate(api.url, api.token, nodes=args.nodes,
                                          events_per_node=args.events,
                                          duration_s=args.duration, storm=args.storm,
                                          prefix=args.prefix))
        except (httpx.HTTPError, OSError) as exc:
            raise CliError(f"the simulation failed against {api.url}: {exc}; is the "
                           "controller running, and does the token allow enrolling?",
                           code="unreachable") from None
        report["controller"] = api.url if args.url else "its own (temporary, removed)"
        left: str | None = None
        if args.url and args.cleanup:
            deleted, left = cleanup_nodes(api, sim_node_ids(args.prefix, args.nodes))
            report["nodes_deleted"] = len(deleted)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:<28} {human(value)}")
    if left:
        print(f"error: {left}", file=sys.stderr)
    return 0 if report["zero_loss"]["ok"] and not left else 1

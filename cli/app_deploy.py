"""``tether app deploy NAME --to NODE [--from NODE]``: deploy a published bundle's app to a
node and, with ``--from``, migrate it: the old node's copy is stopped only after the new
one is healthy (issue 15 "Deploy and migrate"; docs/operations.md "Deploying and migrating
an app").

The deploy is a sequence of ordinary commands, each in the audit log and the commands API:

1. the version: ``--version``; else, with ``--from``, the one active there (the node
   object's ``bundles[NAME].active``); else the newest published. Its file's sha256, size
   and kind come from ``GET /api/v1/bundles/{name}/{version}``;
2. ``update.now`` to ``--to`` (docs/protocol.md "Bundle updates on the session"); the CLI
   waits for it to end, printing the target's bundle state as it changes;
3. Rule 1 (the order): only once that command ``succeeded`` (the version is ``healthy``
   there) **and** the controller sees the target connected (``liveness`` ``online``, a
   session, and ``bundles[NAME].active`` the version), ``bundle.stop`` to ``--from``
   (node/bundles.py Rule 5: stopped for good, across its restarts).

Rule 2 (failure leaves the old copy): a target that ends rejected, failed, rolled back,
or not within ``--timeout-s``, exits 1 naming the target's reason, and ``--from`` is not
touched. Exit 2 for a usage error found before anything is sent.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from tether.common.terminal import terminal_safe
from tether.protocol.frames import TERMINAL_STATES
from tether.protocol.update import BUNDLE_STOP_KIND, UPDATE_KIND, UpdateOffer

from .client import CliError
from .operator import api_from

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
POLL_S = 0.5
MIN_STOP_WAIT_S = 30.0  # the stop's own wait when the target took most of --timeout-s


class DeployApi(Protocol):
    def get(self, path: str, **kw: Any) -> Any: ...

    def post(self, path: str, **kw: Any) -> Any: ...


def add_app_parser(nouns: Any, operator_flags: Callable[..., None]) -> None:
    """The ``app`` group (``nouns`` is cli/main.py's subparsers)."""
    group = nouns.add_parser("app", help="deploy and migrate bundle apps between nodes"
                             ).add_subparsers(dest="verb", required=True)
    dep = group.add_parser(
        "deploy", help="offer a published bundle to a node; with --from, stop it there "
                       "once the new copy is healthy",
        description="Offers bundle NAME to --to as update.now and waits until it is healthy "
                    "there; with --from, then stops the app on that node for good "
                    "(bundle.stop). If the target fails, --from is left running.",
        epilog="exit status: 0 deployed (and migrated); 1 the target did not turn healthy "
               "or the stop failed (the reason is printed); 2 usage.")
    dep.add_argument("name", help="the bundle's name")
    dep.add_argument("--to", required=True, metavar="NODE", help="the node to run it on")
    dep.add_argument("--from", dest="from_node", metavar="NODE",
                     help="the node to move it from: stopped once --to is healthy")
    dep.add_argument("--version", type=int, help="the published version (default: the one "
                     "active on --from, else the newest published)")
    dep.add_argument("--probation-s", type=float, default=30.0,
                     help="how long the app must stay up on --to to be healthy (default 30)")
    dep.add_argument("--timeout-s", type=float, default=600.0,
                     help="give up waiting for --to after this long (default 600)")
    operator_flags(dep)


@dataclass(slots=True)
class Deploy:
    """What the deploy did; ``--json`` prints it."""

    name: str
    version: int
    to_node: str
    from_node: str | None
    update: dict[str, Any] = field(default_factory=dict)
    stop: dict[str, Any] | None = None
    ok: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "to": self.to_node,
                "from": self.from_node, "update": self.update, "stop": self.stop,
                "ok": self.ok}


def _node(api: DeployApi, node_id: str) -> dict[str, Any]:
    out: dict[str, Any] = api.get(f"/api/v1/nodes/{quote(node_id, safe='')}")
    return out


def _bundle_entry(node: dict[str, Any], name: str) -> dict[str, Any]:
    bundles = node.get("bundles") or {}
    entry = bundles.get(name) if isinstance(bundles, dict) else None
    return entry if isinstance(entry, dict) else {}


def resolve_version(api: DeployApi, name: str, *, version: int | None,
                    from_node: str | None) -> int:
    """The version to deploy (module step 1). Raises CliError (2) when there is none."""
    if version is not None:
        if version < 1:
            raise CliError(f"--version must be at least 1, got {version}", 2)
        return version
    if from_node is not None:
        active = _bundle_entry(_node(api, from_node), name).get("active")
        if not isinstance(active, int) or isinstance(active, bool):
            raise CliError(f"node {from_node!r} reports no active version of bundle "
                           f"{name!r}; pass --version", 2)
        return active
    items = api.get("/api/v1/bundles", params={"name": name, "limit": 1})["items"]
    if not items:
        raise CliError(f"no bundle named {name!r} is published; publish one with "
                       "'tether bundle publish FILE'", 2)
    return int(items[0]["version"])


def check_args(args: argparse.Namespace) -> None:
    """The flags' own rules, before anything is asked (CliError 2)."""
    if not NAME_RE.fullmatch(args.name):
        raise CliError(f"bad bundle name {args.name!r}: use [a-z0-9][a-z0-9-]{{0,62}}", 2)
    if args.from_node is not None and args.from_node == args.to:
        raise CliError("--from and --to name the same node; a migration needs two", 2)
    if not 0 <= args.probation_s <= 86_400:
        raise CliError(f"--probation-s must be 0 to 86400, got {args.probation_s:g}", 2)
    if not args.timeout_s > 0:
        raise CliError(f"--timeout-s must be positive, got {args.timeout_s:g}", 2)


def make_offer(api: DeployApi, name: str, version: int, probation_s: float) -> UpdateOffer:
    """The ``update.now`` args for ``name`` ``version`` as published (CliError 2 for a
    runtime bundle: those go out with ``tether rollout``)."""
    b = api.get(f"/api/v1/bundles/{name}/{version}")
    if b.get("kind", "app") != "app":
        raise CliError(f"{name} version {version} is a {b.get('kind')} bundle; ship a "
                       "runtime with 'tether rollout start'", 2)
    return UpdateOffer(name=name, version=version, kind="app", sha256=str(b["sha256"]),
                       size=int(b["size"]), probation_s=float(probation_s))


def _submit(api: DeployApi, node_id: str, kind: str, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = api.post(f"/api/v1/nodes/{quote(node_id, safe='')}/commands",
                                   json={"kind": kind, "args": args})
    return out


def _connected_on(node: dict[str, Any], name: str, version: int) -> bool:
    """The controller sees ``node`` connected on a session, running ``version``."""
    return (node.get("liveness") == "online" and bool(node.get("session"))
            and _bundle_entry(node, name).get("active") == version)


class Waiter:
    """Polls until a deadline; ``say`` prints a progress line."""

    def __init__(self, api: DeployApi, deadline: float, say: Callable[[str], None], *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api, self.deadline, self.say = api, deadline, say
        self.clock, self.sleep = clock, sleep

    def command(self, command_id: str, *, deadline: float | None = None,
                watch: Callable[[], None] | None = None) -> dict[str, Any]:
        """The command once terminal, or as it is at the deadline."""
        end = self.deadline if deadline is None else deadline
        while True:
            cmd: dict[str, Any] = self.api.get(f"/api/v1/commands/{command_id}")
            if watch is not None:
                watch()
            if cmd["state"] in TERMINAL_STATES or self.clock() >= end:
                return cmd
            self.sleep(POLL_S)


def deploy(api: DeployApi, args: argparse.Namespace, say: Callable[[str], None], *,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Deploy:
    """The module's steps. Raises :class:`DeployFailed` (1) after a failure, CliError (2)
    for usage (nothing sent), CliError for the controller's refusals."""
    check_args(args)
    name, to_node, from_node = args.name, args.to, args.from_node
    target = _node(api, to_node)  # 404 names an unknown node before anything is sent
    if from_node is not None:
        source = _node(api, from_node)
        if args.version is not None and _bundle_entry(source, name).get("active") is None:
            raise CliError(f"node {from_node!r} reports no active version of bundle "
                           f"{name!r}: nothing to migrate", 2)
    version = resolve_version(api, name, version=args.version, from_node=from_node)
    offer = make_offer(api, name, version, args.probation_s)
    result = Deploy(name, version, to_node, from_node)
    waiter = Waiter(api, clock() + args.timeout_s, say, clock=clock, sleep=sleep)

    cmd = _submit(api, to_node, UPDATE_KIND, offer.args())
    result.update = {"command_id": cmd["command_id"], "state": cmd["state"]}
    say(f"offered {name} version {version} to {to_node}: update.now {cmd['command_id']}")
    seen: list[tuple[Any, ...]] = [()]

    def watch_target() -> None:
        entry = _bundle_entry(_node(api, to_node), name)
        now = (entry.get("state"), entry.get("version"), entry.get("active"))
        if entry and now != seen[-1] and entry.get("version") == version:
            seen.append(now)
            reason = f" ({terminal_safe(entry['reason'])})" if entry.get("reason") else ""
            say(f"{to_node}: {name} version {version} {entry.get('state')}{reason}")
    done = waiter.command(cmd["command_id"], watch=watch_target)
    result.update = {"command_id": done["command_id"], "state": done["state"],
                     "error": done.get("error"), "result": done.get("result")}
    left = f"; {from_node}'s copy is left running" if from_node else ""
    if done["state"] not in TERMINAL_STATES:
        raise _failed(result, f"{name} version {version} did not turn healthy on {to_node} "
                      f"within {args.timeout_s:g} s (update.now {done['command_id']} is "
                      f"{done['state']}){left}")
    if done["state"] != "succeeded":
        raise _failed(result, f"{name} version {version} did not turn healthy on {to_node}: "
                      f"{done['state']}: {done.get('error') or 'no reason given'}{left}")
    while not _connected_on(target := _node(api, to_node), name, version):
        if clock() >= waiter.deadline:
            raise _failed(result, f"{to_node} reported {name} version {version} healthy but "
                          f"the controller does not see it connected running it (liveness "
                          f"{target.get('liveness')}){left}")
        sleep(POLL_S)
    say(f"{to_node}: {name} version {version} healthy and connected")
    if from_node is None:
        result.ok = True
        return result

    stop = _submit(api, from_node, BUNDLE_STOP_KIND, {"name": name})
    result.stop = {"command_id": stop["command_id"], "state": stop["state"]}
    say(f"stopping {name} on {from_node}: bundle.stop {stop['command_id']}")
    stopped = waiter.command(stop["command_id"],
                             deadline=max(waiter.deadline, clock() + MIN_STOP_WAIT_S))
    result.stop = {"command_id": stopped["command_id"], "state": stopped["state"],
                   "error": stopped.get("error"), "result": stopped.get("result")}
    if stopped["state"] not in TERMINAL_STATES:
        raise _failed(result, f"{name} runs on {to_node}, but {from_node} has not stopped "
                      f"it yet (bundle.stop {stopped['command_id']} is {stopped['state']}; "
                      "it runs when the node takes it)")
    if stopped["state"] != "succeeded":
        raise _failed(result, f"{name} runs on {to_node}, but stopping it on {from_node} "
                      f"failed: {stopped['state']}: {stopped.get('error')}")
    say(f"{from_node}: {name} stopped")
    result.ok = True
    return result


class DeployFailed(CliError):
    """The deploy stopped short (exit 1); ``deploy`` holds what it did up to there."""

    def __init__(self, message: str, deploy: Deploy) -> None:
        super().__init__(message, 1, code="deploy_failed")
        self.deploy = deploy


def _failed(result: Deploy, message: str) -> DeployFailed:
    return DeployFailed(message, result)


def app_command(args: argparse.Namespace) -> int:
    """``tether app deploy``: exit 0, 1 (the reason on stderr), 2 usage."""
    api = api_from(args)
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)
    try:
        result = deploy(api, args, say)
    except DeployFailed as exc:
        if args.json:
            print(json.dumps(exc.deploy.as_dict(), indent=2))
        raise
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        ids = [f"update.now {result.update['command_id']}"]
        if result.stop:
            ids.append(f"bundle.stop {result.stop['command_id']}")
        print(f"deployed {result.name} version {result.version} to {result.to_node}"
              + (f", stopped on {result.from_node}" if result.from_node else "")
              + f" ({', '.join(ids)})")
    return 0

"""Operator commands: join tokens, nodes, exec, commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
from typing import Any

from tether.common.terminal import terminal_safe
from tether.protocol.frames import TERMINAL_STATES

from .client import Api, CliError, resolve_token, resolve_url
from .output import EXIT_OUTPUT_DROPPED, OutputWriter, dropped_line, follow
from .remote_io import Detached, exec_attached, run_shell
from .render import human
from .rtc_show import rtc_show_lines

DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_duration(text: str) -> float:
    m = DURATION_RE.match(text.strip())
    if not m:
        raise CliError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h, 7d", 2)
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_labels(items: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"bad label {item!r}: use key=value", 2)
        labels[key] = value
    return labels


def api_from(args: argparse.Namespace) -> Api:
    """The controller the flags, the environment or the current context name (per setting,
    in that order: cli/context.py). A context supplies its token, CA file and pins only
    when the URL came from it too: a token never goes to a controller it was not kept for."""
    from .context import current_context

    ctx = current_context(getattr(args, "context", None))
    explicit = bool(args.url or os.environ.get("TETHER_URL"))
    if explicit and ctx and (args.url or os.environ["TETHER_URL"]).rstrip("/") != \
            str(ctx.get("url", "")).rstrip("/"):
        ctx = {}
    pins = tuple(getattr(args, "pin_sha256", None) or ctx.get("pins") or ())
    return Api(url=resolve_url(args.url, context=ctx),
               token=resolve_token(args.token, context=ctx),
               ca_file=getattr(args, "ca_file", None) or ctx.get("ca_file"), pins=pins)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [{c: human(r.get(c)) for c in columns} for r in rows]
    widths = {c: max([len(c)] + [len(r[c]) for r in cells]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in cells:
        print("  ".join(r[c].ljust(widths[c]) for c in columns))


# -- join-token ------------------------------------------------------------------------------

def join_token_create(args: argparse.Namespace) -> int:
    api = api_from(args)
    out = api.post("/api/v1/join-tokens", json={"ttl_s": parse_duration(args.ttl),
                                                "uses": args.uses,
                                                "labels": parse_labels(args.label)})
    if args.json:
        print(json.dumps(out))
    else:
        print(out["token"])
        print(f"expires {out['expires_at']}, {out['uses']} use(s)", file=sys.stderr)
    return 0


# -- nodes -------------------------------------------------------------------------------------

def nodes_list(args: argparse.Namespace) -> int:
    from .jobs import nodes_filter_params  # -l / --liveness: filtered by the controller

    items = api_from(args).get("/api/v1/nodes", params=nodes_filter_params(args))["items"]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    rows = [{"node": n["node_id"], "liveness": n["liveness"],
             "runtime": (n.get("runtime") or {}).get("state"),
             "session": (n.get("session") or {}).get("session_id"),
             "last_seen": n.get("last_seen_at"),
             "labels": ",".join(f"{k}={v}" for k, v in _map(n.get("labels")).items())}
            for n in items]
    print_table(rows, ["node", "liveness", "runtime", "session", "last_seen", "labels"])
    return 0


def nodes_show(args: argparse.Namespace) -> int:
    api = api_from(args)
    node = api.get(f"/api/v1/nodes/{args.node_id}")
    if args.json:
        print(json.dumps(node, indent=2))
        return 0
    session = _map(node.get("session"))
    caps = node.get("capabilities")
    for key, value in [("node", node.get("node_id")), ("liveness", node.get("liveness")),
                       ("runtime", _runtime_line(node.get("runtime"))),
                       ("session", session.get("session_id")),
                       ("opened", session.get("opened_at")), ("remote", session.get("remote")),
                       ("resumed", session.get("resumed")),
                       ("last seen", node.get("last_seen_at")),
                       ("capabilities", caps),
                       ("labels", node.get("labels")),
                       ("resources", _resources_line(_map(node.get("resources")))),
                       ("apps", _apps_line(node.get("apps"))),
                       ("bundles", _bundles_line(node.get("bundles"))),
                       ("ready", _ready_line(node.get("health")))]:
        print(f"{key:<13} {human(value)}")
    for line in rtc_show_lines(node.get("rtc")):  # escaped and clipped there
        print(line)
    return 0


def _map(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else empty: node-sent parts of a view are shown
    whatever their shape, never trusted to have it."""
    return value if isinstance(value, dict) else {}


def _runtime_line(runtime: object) -> object:
    """``attached 0.1.0`` from the runtime part of a node view (any other shape as is)."""
    if not isinstance(runtime, dict):
        return runtime
    parts = [runtime.get("state"), runtime.get("version")]
    update = _map(runtime.get("update"))  # a runtime self-update in progress
    if update:
        parts += ["(updating:", update.get("stage"), "->", update.get("version"),
                  f"slot {human(update.get('slot'))})"]
    return " ".join(human(p) for p in parts if p is not None) or None


def _ready_line(health: object) -> str | None:
    """``yes``, or ``no: <reasons>``, from the node's last health report (None: none yet)."""
    if not isinstance(health, dict) or not isinstance(health.get("ready"), bool):
        return None
    reasons = health.get("reasons")
    why = "; ".join(human(r) for r in reasons) if isinstance(reasons, list) else ""
    return "yes" if health["ready"] else f"no: {why}" if why else "no"


def _bundles_line(bundles: object) -> str | None:
    """``web 3 healthy (last-known-good 2)``, one per bundle name, from the node's view."""
    line = ", ".join(f"{human(name)} {human(_map(b).get('active'))} "
                     f"{human(_map(b).get('state'))}"
                     f" (last-known-good {human(_map(b).get('last_known_good'))})"
                     for name, b in _map(bundles).items())
    return line or None


def _apps_line(apps: object) -> str | None:
    line = ", ".join(f"{name} {human(_map(app).get('state'))} "
                     f"(restarts {human(_map(app).get('restarts'))})"
                     for name, app in _map(apps).items())
    return line or None


def _resources_line(res: dict[str, Any]) -> str | None:
    if not res:
        return None
    mem, disk = _map(res.get("memory")), _map(res.get("disk"))
    free = disk.get("free")
    free_text = f"{free // 2**20} MiB" if isinstance(free, int) else "? MiB"
    return (f"cpu {human(res.get('cpu_percent'))}% of {human(res.get('cpus'))}, "
            f"load {human(res.get('load'))}, mem {human(mem.get('percent'))}%, "
            f"disk {human(disk.get('percent'))}% ({free_text} free), "
            f"{human(res.get('processes'))} processes")


def node_publish(args: argparse.Namespace) -> int:
    """POST a monitor packet to the local runtime's loopback /publish."""
    import httpx

    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise CliError(f"--json is not valid JSON: {exc}", 2) from None
    url_file = args.state_dir / "runtime.status.url"
    if not url_file.exists():
        raise CliError(f"no runtime runs for {args.state_dir}; start it with 'tether node run'")
    try:
        resp = httpx.post(url_file.read_text().strip() + "/publish", timeout=5,
                          json={"topic": args.topic, "data": data})
    except httpx.HTTPError as exc:
        raise CliError(f"the runtime did not answer: {exc}") from None
    if resp.status_code != 202:
        raise CliError(resp.json()["error"]["message"])
    print(resp.json()["seq"])
    return 0


# -- commands ---------------------------------------------------------------------------------

def commands_show(args: argparse.Namespace) -> int:
    cmd = api_from(args).get(f"/api/v1/commands/{args.command_id}")
    if args.json:
        print(json.dumps(cmd, indent=2))
        return 0
    for key in ("command_id", "node_id", "kind", "args", "state", "exit_code", "error"):
        print(f"{key:<11} {human(cmd.get(key))}")
    print("timeline:")
    timeline = cmd.get("timeline")
    print_table([{"state": _map(e).get("state"), "at": _map(e).get("at"),
                  "detail": _map(e).get("detail")}
                 for e in (timeline if isinstance(timeline, list) else [])],
                ["state", "at", "detail"])
    return 0


def commands_control(args: argparse.Namespace) -> int:
    """cancel / pause / resume: the controller pushes it to the node at once."""
    cmd = api_from(args).post(f"/api/v1/commands/{args.command_id}/{args.verb}")
    print(json.dumps(cmd) if args.json else f"{cmd['command_id']}: {args.verb} requested "
          f"(state {cmd['state']})")
    return 0


def logs_command(args: argparse.Namespace) -> int:
    """Print a command's output byte-exact; with --follow, stream it live and exit with its
    code. Output that was dropped is said on stderr (exit 3 if nothing else failed)."""
    api = api_from(args)
    writer = OutputWriter()
    if not args.follow:
        cmd = writer.catch_up(api, args.command_id)
        if cmd["state"] not in TERMINAL_STATES:
            return 0
        return _report_dropped(cmd, writer, 0)
    try:
        final = asyncio.run(follow(api, args.command_id, writer))
    except KeyboardInterrupt:
        return 130
    return _report_dropped(final, writer, exit_code_of(final))


def _report_dropped(cmd: dict[str, Any], writer: OutputWriter, code: int) -> int:
    """Say on stderr how many bytes of a finished command's output were dropped; the exit
    code becomes EXIT_OUTPUT_DROPPED (3) unless it already says the command failed."""
    dropped = writer.dropped_bytes(cmd)
    if not dropped:
        return code
    print(dropped_line(dropped, cmd["command_id"]), file=sys.stderr)
    return code or EXIT_OUTPUT_DROPPED


def exit_code_of(cmd: dict[str, Any]) -> int:
    code = cmd.get("exit_code")
    if cmd["state"] == "succeeded":
        return 0
    if isinstance(code, int):
        return 128 - code if code < 0 else code
    return 1


def exec_command(args: argparse.Namespace) -> int:
    if getattr(args, "label", None) or getattr(args, "liveness", None):
        from .jobs import exec_on_many  # a job over the selected nodes (cli/jobs.py)

        many = ([args.node] if args.node else []) + args.argv
        many = many[1:] if many[:1] == ["--"] else many
        if not many:
            raise CliError("nothing to run: tether exec -l KEY=VALUE -- ARGV...", 2)
        return exec_on_many(args, many)
    if args.node is None:
        raise CliError("no node: tether exec NODE -- ARGV, or -l KEY=VALUE for many", 2)
    if args.offline == "skip":
        raise CliError("--offline skip is for many nodes (-l); for one node use fail", 2)
    argv = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else args.argv
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise CliError("nothing to run: tether exec NODE -- ARGV...", 2)
    api = api_from(args)
    body: dict[str, Any] = {"kind": "exec", "args": {"argv": argv}}
    if args.timeout is not None:
        body["args"]["timeout_s"] = parse_duration(args.timeout)
    if args.ttl is not None:
        body["ttl_s"] = parse_duration(args.ttl)
    body["offline"] = args.offline
    stdin_fd = _stdin_to_stream(args)
    if stdin_fd is not None:
        body["args"]["stdin"] = True
    cmd = api.post(f"/api/v1/nodes/{args.node}/commands", json=body)
    if args.no_wait:
        print(cmd["command_id"])
        return 0
    from .offline import detached_line, say_if_offline

    writer = OutputWriter()
    # From here a Ctrl-C is for the remote command: one caught before the loop takes over
    # is handed to it (exec_attached), not lost to a KeyboardInterrupt.
    early: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: early.append(signum))
    try:
        say_if_offline(api, args.node, cmd)
        final = asyncio.run(exec_attached(
            api, cmd["command_id"], writer, stdin_fd=stdin_fd,
            detach_on_interrupt=args.detach, early_interrupts=early,
            on_interrupt=lambda: print("\ntether: interrupt sent to the remote command "
                                       "(Ctrl-C again to detach)", file=sys.stderr)))
    except (KeyboardInterrupt, Detached):
        print("\n" + detached_line(cmd["command_id"]), file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    if final["state"] != "succeeded":
        detail = final.get("error") or ""
        print(f"tether: command {final['state']}{': ' + terminal_safe(detail) if detail else ''}",
              file=sys.stderr)
    return _report_dropped(final, writer, exit_code_of(final))


def _stdin_to_stream(args: argparse.Namespace) -> int | None:
    """The fd whose bytes become the remote command's stdin, or None: ``-n`` never, ``-i``
    always, else when stdin is not a terminal (a pipe or a file, as ``ssh host cmd``
    reads it); never with ``--no-wait`` (nobody would feed it)."""
    if args.no_wait or args.no_stdin:
        return None
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None
    return fd if args.stdin or not os.isatty(fd) else None


def shell_command(args: argparse.Namespace) -> int:
    """An interactive shell on the node (a pty over its session); exits with the remote
    shell's code."""
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    final = run_shell(api_from(args), args.node, argv or None)
    if final.get("state") != "succeeded":
        detail = final.get("error") or ""
        if final.get("state") != "failed" or not isinstance(final.get("exit_code"), int):
            print(f"tether: shell {final.get('state')}"
                  f"{': ' + terminal_safe(detail) if detail else ''}", file=sys.stderr)
    return exit_code_of({"state": final.get("state"), "exit_code": final.get("exit_code")})

"""The one ``tether`` command: ``tether <noun> <verb>``. Exit 0 ok, 1 failure, 2 usage."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tether.common import __version__
from tether.common.logsetup import setup_logging
from tether.common.terminal import terminal_safe
from tether.protocol.errors import TetherError

from . import admin as admin_cli
from . import operator as op
from .app_deploy import add_app_parser
from .bundle import add_bundle_parser, add_trust_parser
from .bundle_remote import (
    REMOTE_VERBS,
    add_controller_bundle_arguments,
    add_remote_bundle_verbs,
    bundle_remote_command,
    controller_bundle_config,
)
from .bundle_runtime import add_build_runtime_parser, build_runtime_command
from .client import CliError
from .commands import add_commands_list_parser, commands_list
from .context import add_context_parser, context_command
from .controller_rtc import add_rtc_arguments as add_controller_rtc_arguments
from .controller_rtc import rtc_config as controller_rtc_config
from .cp import add_cp_parser
from .errors import JsonErrorParser, print_error
from .helptext import fill_help
from .node_rtc import add_rtc_arguments, rtc_config, rtc_lines
from .render import human
from .rollout import add_rollout_parser
from .supervise import add_supervise_parser, supervise_command


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TETHER_{name}", default)


def _replica_id(text: str) -> str:
    from tether.controller.services.replica import check_replica_id

    try:
        return check_replica_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _operator_flags(p: argparse.ArgumentParser, *, table: bool = True) -> None:
    p.add_argument("--url", help="controller URL (env TETHER_URL; default: the local one)")
    p.add_argument("--token", help="operator token (env TETHER_TOKEN; default: local admin)")
    p.add_argument("--ca-file", help="CA bundle to trust for an https:// controller "
                                     "(default: the context's, else the system store)")
    p.add_argument("--pin-sha256", action="append", default=[],
                   help="accept only a controller certificate with this SHA-256 (hex of "
                        "its DER form; repeatable; default: the context's pins)")
    p.add_argument("--context", help="use this context of the CLI config (env "
                                     "TETHER_CONTEXT; default: the current one). Precedence: "
                                     "flags, then TETHER_URL/TETHER_TOKEN, then the context, "
                                     "then the local controller's data dir")
    if table:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = JsonErrorParser(prog="tether", description="Tether realtime mesh")
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    parser.add_argument("--log-format", choices=["text", "json"],
                        default=_env("LOG_FORMAT", "text"))
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    nouns = parser.add_subparsers(dest="noun", required=True, metavar="COMMAND")

    ctl = nouns.add_parser("controller", help="run the controller").add_subparsers(
        dest="verb", required=True)
    serve = ctl.add_parser("serve", help="serve the edge gateway, /ws and the REST API")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(_env("PORT", "8700") or 8700))
    serve.add_argument("--data-dir", type=Path,
                       default=Path(_env("DATA_DIR", ".tether/controller") or ""))
    serve.add_argument("--store", default=_env("STORE"),
                       help="postgresql://user:pass@host/db to share state between replicas "
                            "(default: the SQLite file in the data dir)")
    serve.add_argument("--bus", default=_env("BUS"),
                       help="nats://host:4222 (comma-separated for several) to route between "
                            "replicas (default: none, one controller)")
    serve.add_argument("--replica-id", type=_replica_id, default=_env("REPLICA_ID"),
                       help="this replica's name in session history and on NATS, 1-64 of "
                            "[A-Za-z0-9_:-] (default: generated once, kept in the data dir)")
    serve.add_argument("--durability", choices=["fsync", "process"],
                       default=_env("DURABILITY", "fsync"),
                       help="fsync: an ack survives power loss (default); process: survives "
                            "a crash of the process, not of the machine")
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--heartbeat-s", type=float, default=15.0)
    serve.add_argument("--stale-after-s", type=float, default=60.0)
    serve.add_argument("--offline-after-s", type=float, default=300.0)
    serve.add_argument("--handshake-timeout-s", type=float, default=10.0,
                       help="close with 4408 when no hello arrives within this")
    serve.add_argument("--max-log-bytes-per-command", type=int, default=16 << 20,
                       help="output kept per command (default 16 MiB); past it, bytes are "
                            "counted, not kept, and `tether exec` says so (exit 3)")
    serve.add_argument("--max-log-bytes-per-node", type=int, default=64 << 20,
                       help="all logs a node keeps; past it the oldest are pruned")
    serve.add_argument("--max-node-log-bytes-per-node", type=int, default=8 << 20,
                       help="app and runtime logs a node keeps; past it the oldest go")
    serve.add_argument("--max-node-events-per-node", type=int, default=10_000,
                       help="node events a node keeps; past it the oldest are pruned")
    serve.add_argument("--max-node-event-bytes-per-node", type=int, default=4 << 20,
                       help="node event bytes a node keeps; past it the oldest are pruned")
    serve.add_argument("--max-node-event-bytes", type=int, default=64 << 10,
                       help="one node event stored over this is refused (quota_exceeded)")
    serve.add_argument("--max-monitor-bytes-per-node", type=int, default=4 << 20,
                       help="monitor packets kept in memory per node; oldest dropped")
    serve.add_argument("--max-monitor-bytes-total", type=int, default=256 << 20,
                       help="monitor packets kept in memory for all nodes; oldest dropped")
    serve.add_argument("--max-pending-evt-bytes", type=int, default=8 << 20,
                       help="bytes of class A frames a session holds for the store; past it "
                            "the controller stops reading that node until they are stored")
    serve.add_argument("--max-dead-letters-per-node", type=int, default=1000,
                       help="poison frames kept per node with their reason; past it the "
                            "oldest are deleted (all are counted)")
    serve.add_argument("--audit-max-age-days", type=float, default=400.0,
                       help="audit records older than this are pruned, hourly (default "
                            "400; 0 keeps them whatever their age)")
    serve.add_argument("--max-audit-records", type=int, default=1_000_000,
                       help="audit records kept; past it the oldest are pruned, hourly "
                            "(default 1,000,000; 0: no limit)")
    serve.add_argument("--min-hello-timeout-s", type=float, default=3.0,
                       help="under pressure the hello deadline tightens, never below this")
    serve.add_argument("--hello-pressure-at", type=int, default=2048,
                       help="connections waiting for a hello before the deadline tightens")
    serve.add_argument("--max-prehello", type=int, default=8192,
                       help="connections waiting for a hello; past it the oldest is closed")
    serve.add_argument("--max-prehello-per-address", type=int, default=4096,
                       help="the same, per remote address")
    serve.add_argument("--header-timeout-s", type=float, default=10.0,
                       help="an HTTP request header must arrive within this (else 408)")
    serve.add_argument("--body-timeout-s", type=float, default=30.0,
                       help="an HTTP request body must arrive within this (else 408)")
    serve.add_argument("--max-pending-headers", type=int, default=16384,
                       help="connections waiting for a request header; past it the oldest "
                            "is answered 408")
    serve.add_argument("--max-concurrent-handshakes", type=int, default=512,
                       help="edge handshakes running at once; more wait for a slot")
    serve.add_argument("--max-waiting-handshakes", type=int, default=8192,
                       help="edge connections waiting for a handshake slot; past this (or "
                            "after 8 s of waiting) they get 4429 with a retry_after")
    serve.add_argument("--allowed-origin", action="append", default=[],
                       help="extra Origin allowed on /ws (repeatable)")
    serve.add_argument("--downlink-check-s", type=float, default=5.0,
                       help="how often sessions with queued commands they were not woken for "
                            "are woken: bounds how long a nudge lost between replicas delays "
                            "a command (default 5)")
    serve.add_argument("--ws-max-queue", type=int, default=1024,
                       help="events queued per /ws client before a slow one is cut off")
    serve.add_argument("--ws-max-queue-bytes", type=int, default=16 << 20)
    serve.add_argument("--metrics-require-token", action="store_true",
                       help="GET /metrics only with a valid operator token (any role); "
                            "open to whoever reaches the port by default")
    add_controller_rtc_arguments(serve)
    add_controller_bundle_arguments(serve)

    jt = nouns.add_parser("join-token", help="join tokens for enrolling nodes").add_subparsers(
        dest="verb", required=True)
    jtc = jt.add_parser("create", help="create a join token")
    jtc.add_argument("--ttl", default="1h", help="lifetime, e.g. 15m, 1h, 7d (default 1h)")
    jtc.add_argument("--uses", type=int, default=1)
    jtc.add_argument("--label", action="append", help="k=v applied to nodes it enrolls")
    _operator_flags(jtc)
    admin_cli.add_join_token_verbs(jt, _operator_flags)

    node = nouns.add_parser("node", help="run and inspect this machine's node").add_subparsers(
        dest="verb", required=True)
    enroll = node.add_parser("enroll", help="make this node's key and enroll it")
    enroll.add_argument("--controller", required=True, help="controller URL")
    enroll.add_argument("--token", required=True, help="join token")
    enroll.add_argument("--node-id", required=True)
    enroll.add_argument("--label", action="append")
    enroll.add_argument("--fallback-url", action="append", default=[],
                        help="another controller URL to fail over to (repeatable)")
    enroll.add_argument("--ca-file", help="CA bundle to trust for the controller's TLS")
    enroll.add_argument("--pin-sha256", action="append", default=[],
                        help="accept only a controller certificate with this SHA-256 (hex)")
    enroll.add_argument("--proxy", help="HTTP CONNECT proxy URL (default: HTTPS_PROXY)")
    enroll.add_argument("--state-dir", type=Path,
                        default=Path(_env("STATE_DIR", ".tether/node") or ""))
    run = node.add_parser("run", help="run the node runtime")
    run.add_argument("--state-dir", type=Path,
                     default=Path(_env("STATE_DIR", ".tether/node") or ""))
    run.add_argument("--durability", choices=["fsync", "process"],
                     default=_env("DURABILITY", "fsync"))
    run.add_argument("--controller-url", help="dial this URL instead of the enrolled one")
    run.add_argument("--max-concurrent", type=int, default=16)
    run.add_argument("--policy", type=Path,
                     help="policy file (default: <state-dir>/policy.json when present)")
    run.add_argument("--status-host", default="127.0.0.1",
                     help="loopback address for /healthz, /readyz, /status")
    run.add_argument("--status-port", type=int, default=0,
                     help="0 picks a free port (written to <state-dir>/runtime.status.url)")
    add_rtc_arguments(run)
    run.add_argument("--io-lease-s", type=float, default=60.0,
                     help="hang up a shell or exec --stdin whose operator side sent nothing "
                          "(not even a keepalive, every 10 s) for this long (default 60)")
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    add_supervise_parser(node, Path(_env("STATE_DIR", ".tether/node") or ""))
    for verb, help_text in (("stop", "stop the runtime and the sidecar (goodbye)"),
                            ("restart", "restart only the runtime; the session stays")):
        p = node.add_parser(verb, help=help_text)
        p.add_argument("--state-dir", type=Path,
                       default=Path(_env("STATE_DIR", ".tether/node") or ""))
    sidecar = nouns.add_parser("sidecar", help="the transport sidecar").add_subparsers(
        dest="verb", required=True)
    srun = sidecar.add_parser("run", help="run the sidecar (normally started by node run)")
    srun.add_argument("--state-dir", type=Path,
                      default=Path(_env("STATE_DIR", ".tether/node") or ""))
    srun.add_argument("--controller-url", help="dial this URL instead of the enrolled one")
    srun.add_argument("--proxy", help="HTTP CONNECT proxy URL (default: HTTPS_PROXY)")
    srun.add_argument("--ca-file")
    srun.add_argument("--pin-sha256", action="append", default=[])
    srun.add_argument("--status-host", default="127.0.0.1")
    srun.add_argument("--status-port", type=int, default=0)
    pub = node.add_parser("publish", help="publish a monitor packet from this machine")
    pub.add_argument("--topic", required=True)
    pub.add_argument("--json", dest="data", required=True, help="the packet, a JSON object")
    pub.add_argument("--state-dir", type=Path,
                     default=Path(_env("STATE_DIR", ".tether/node") or ""))
    status = node.add_parser("status", help="this node's state, from its state dir")
    status.add_argument("--state-dir", type=Path,
                        default=Path(_env("STATE_DIR", ".tether/node") or ""))
    status.add_argument("--json", action="store_true")
    add_trust_parser(node, Path(_env("STATE_DIR", ".tether/node") or ""))

    nodes = nouns.add_parser("nodes", help="the fleet").add_subparsers(dest="verb",
                                                                        required=True)
    nlist = nodes.add_parser("list", help="all nodes, or those matching -l / --liveness")
    nlist.add_argument("-l", "--label", action="append",
                       help="only nodes with this label, KEY=VALUE (repeatable: all must hold)")
    nlist.add_argument("--liveness", action="append",
                       choices=["online", "degraded", "updating", "stale", "offline"],
                       help="only nodes in this liveness state (repeatable: any of them)")
    _operator_flags(nlist)
    show = nodes.add_parser("show", help="one node")
    show.add_argument("node_id")
    _operator_flags(show)
    admin_cli.add_nodes_verbs(nodes, _operator_flags)
    admin_cli.add_nouns(nouns, _operator_flags)

    ex = nouns.add_parser(
        "exec", help="run a command on a node and stream its output",
        description="Runs ARGV on NODE and writes its stdout and stderr here, every byte in "
                    "order and exact (a slow reader slows the process down).",
        epilog="exit status: the remote command's (a signal N gives 128+N); 1 when tether "
               "itself failed; 3 when the command succeeded but some of its output was "
               "dropped past an output cap (a failed command keeps its own code; either way "
               "stderr says how many bytes were dropped).")
    ex.add_argument("node", nargs="?", help="the node (leave out with -l/--liveness)")
    ex.add_argument("-l", "--label", action="append",
                    help="run on every node with this label, KEY=VALUE (repeatable), as a "
                         "job: output prefixed with each node's id, then a summary table")
    ex.add_argument("--liveness", action="append",
                    choices=["online", "degraded", "updating", "stale", "offline"],
                    help="with -l: only nodes in this liveness state (repeatable)")
    ex.add_argument("--max-in-flight", type=int,
                    help="with -l: at most this many nodes running it at once")
    ex.add_argument("--no-wait", action="store_true", help="print the command id and return")
    ex.add_argument("--timeout", help="kill it after this long on the node, e.g. 30s")
    ex.add_argument("--ttl", help="expire it if not delivered within this long")
    ex.add_argument("--offline", choices=["queue", "fail", "skip"], default="queue",
                    help="queue (default): wait for an offline node; fail: refuse at once "
                         "(with -l: that node's part fails); skip (-l only): leave it out")
    ex.add_argument("--detach", action="store_true",
                    help="Ctrl-C detaches (the command goes on) instead of interrupting it")
    stdin = ex.add_mutually_exclusive_group()
    stdin.add_argument("-i", "--stdin", action="store_true",
                       help="stream stdin to the command even from a terminal (default: "
                            "only when stdin is a pipe or a file)")
    stdin.add_argument("-n", "--no-stdin", action="store_true",
                       help="do not stream stdin (the command reads /dev/null)")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    _operator_flags(ex, table=False)

    sh = nouns.add_parser(
        "shell", help="an interactive shell on a node (a pty over its session)",
        description="Opens a pty on NODE running ARGV (default: the node's login shell), "
                    "over the node's existing session: no inbound port on the node. The "
                    "node's policy may deny it (deny_kinds: [\"shell\"]).",
        epilog="exit status: the remote shell's (a signal N gives 128+N); 1 when tether "
               "itself failed or the policy refused the shell.")
    sh.add_argument("node")
    sh.add_argument("argv", nargs=argparse.REMAINDER, help="-- ARGV: what to run instead")
    _operator_flags(sh, table=False)

    add_cp_parser(nouns, _operator_flags)
    add_rollout_parser(nouns, _operator_flags)
    add_app_parser(nouns, _operator_flags)
    # one bundle group: the local verbs (cli/bundle.py) and the controller's (bundle_remote)
    bundle_verbs = add_bundle_parser(nouns)
    add_remote_bundle_verbs(bundle_verbs, _operator_flags)
    add_build_runtime_parser(bundle_verbs)

    cmds = nouns.add_parser("commands", help="inspect and cancel commands").add_subparsers(
        dest="verb", required=True)
    cshow = cmds.add_parser("show", help="a command: its args, state, exit code, timeline")
    cshow.add_argument("command_id", help="the command's id (c_...)")
    _operator_flags(cshow)
    add_commands_list_parser(cmds, _operator_flags)
    for verb in ("cancel", "pause", "resume"):
        control = cmds.add_parser(verb, help=f"{verb} a command on its node, at once")
        control.add_argument("command_id", help="the command's id (c_...)")
        _operator_flags(control)

    jobs = nouns.add_parser("jobs", help="one command over many nodes").add_subparsers(
        dest="verb", required=True)
    jlist = jobs.add_parser("list", help="recent jobs, newest first, with their summaries")
    jlist.add_argument("--limit", type=int, default=50, help="at most this many jobs")
    _operator_flags(jlist)
    for verb, text in (("show", "a job and each node's result"),
                       ("cancel", "cancel a job: parts not started never start, running "
                                  "commands are cancelled")):
        jp = jobs.add_parser(verb, help=text)
        jp.add_argument("job_id")
        _operator_flags(jp)

    logs = nouns.add_parser(
        "logs", help="a command's output",
        epilog="exit status: 0 (with --follow, the command's own); 3 when the command "
               "succeeded but some of its output was dropped past an output cap (stderr "
               "says how many bytes).")
    logs.add_argument("command_id")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="stream live until the command ends")
    _operator_flags(logs, table=False)

    bench = nouns.add_parser(
        "bench", help="the benchmark suite, side by side with the peers",
        description="Runs every benchmark on loopback (a controller process, simulated "
                    "nodes, a raw websockets echo, Mosquitto) and prints a table.")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smaller run, under 2 minutes")
    size.add_argument("--tiny", action="store_true", help="seconds; checks the plumbing only")
    bench.add_argument("--only", action="append",
                       choices=["core", "peers", "fleet", "flood", "cluster", "media",
                                "dashboard"],
                       help="run only these suites (repeatable)")
    bench.add_argument("--json", action="store_true", help="print the JSON report")
    bench.add_argument("--out", type=Path, help="write the JSON report here")

    diag = nouns.add_parser("diag", help="probes that say why something is off").add_subparsers(
        dest="verb", required=True)
    dws = diag.add_parser("ws", help="every step from DNS to a heartbeat, timed")
    dws.add_argument("url", help="the controller URL, e.g. https://ctl:8700")
    dws.add_argument("--node-id")
    dws.add_argument("--node-key", type=Path, help="say hello as this node (supersedes a "
                                                   "live session of it)")
    dws.add_argument("--state-dir", type=Path, help="a node's state dir: its key, id, epoch")
    dws.add_argument("--ca-file")
    dws.add_argument("--pin-sha256", action="append", default=[])
    dws.add_argument("--proxy")
    dws.add_argument("--timeout", type=float, default=5.0, help="seconds per step")
    dws.add_argument("--json", action="store_true")

    droute = diag.add_parser("route", help="diag.ping through the controller, hop by hop")
    droute.add_argument("node")
    droute.add_argument("--count", type=int, default=20)
    droute.add_argument("--interval", type=float, default=0.2)
    droute.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for each ping and each request (default 3)")
    _operator_flags(droute)
    dctl = diag.add_parser("controller", help="sessions, store latency, /ws, loop lag")
    dctl.add_argument("--timeout", type=float, default=5.0,
                      help="seconds to wait for the controller (default 5)")
    _operator_flags(dctl)
    dnode = diag.add_parser("node", help="this node's readiness, transport and outbox")
    dnode.add_argument("--state-dir", type=Path,
                       default=Path(_env("STATE_DIR", ".tether/node") or ""))
    dnode.add_argument("--json", action="store_true")

    sim = nouns.add_parser("sim", help="a fleet of simulated nodes on the real protocol")
    sim.add_argument("--nodes", type=int, default=100)
    sim.add_argument("--events", type=int, default=10, help="class A events per node")
    sim.add_argument("--duration", type=float, default=5.0, help="seconds to spread them")
    sim.add_argument("--storm", action="store_true",
                     help="then drop every session at once and time the way back")
    sim.add_argument("--prefix", default="sim", help="node id prefix")
    sim.add_argument("--cleanup", action="store_true",
                     help="with --url: delete the simulated nodes afterwards")
    _operator_flags(sim)
    sim.description = ("Without --url, sim runs its own controller (temporary data dir, "
                       "removed after), so it never mixes into a live fleet; TETHER_URL and "
                       "contexts are ignored here.")

    demo = nouns.add_parser("demo", help="a controller and local nodes on loopback")
    demo.add_argument("--nodes", type=int, default=1)
    demo.add_argument("--port", type=int, default=8700)
    demo.add_argument("--dir", type=Path, default=Path(".tether"))
    add_context_parser(nouns)
    fill_help(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    JsonErrorParser.json_requested = "--json" in (sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    setup_logging(fmt=args.log_format, level=args.log_level)
    try:
        return dispatch(args)
    except CliError as exc:
        return print_error(args, exc.code, str(exc), exc.exit_code)
    except TetherError as exc:
        return print_error(args, exc.code, exc.message, 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `tether nodes list | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def dispatch(args: argparse.Namespace) -> int:
    noun, verb = args.noun, getattr(args, "verb", None)
    if noun == "controller":
        from tether.controller.config import ControllerConfig
        from tether.controller.server import serve
        from tether.protocol.liveness import Thresholds

        if bool(args.tls_cert) != bool(args.tls_key):
            raise CliError("--tls-cert and --tls-key go together", 2)
        try:
            thresholds = Thresholds(args.heartbeat_s, args.stale_after_s, args.offline_after_s)
        except ValueError as exc:
            raise CliError(str(exc), 2) from None
        return serve(ControllerConfig(
            data_dir=args.data_dir, host=args.host, port=args.port,
            store_url=args.store or None, bus_url=args.bus or None,
            replica_id=args.replica_id or None,
            durability=args.durability, thresholds=thresholds, tls_cert=args.tls_cert,
            tls_key=args.tls_key, log_format=args.log_format,
            handshake_timeout_s=args.handshake_timeout_s,
            min_hello_timeout_s=args.min_hello_timeout_s,
            hello_pressure_at=args.hello_pressure_at, max_prehello=args.max_prehello,
            max_prehello_per_address=args.max_prehello_per_address,
            header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
            max_pending_headers=args.max_pending_headers,
            max_concurrent_handshakes=args.max_concurrent_handshakes,
            max_waiting_handshakes=args.max_waiting_handshakes,
            max_log_bytes_per_command=args.max_log_bytes_per_command,
            max_log_bytes_per_node=args.max_log_bytes_per_node,
            max_node_log_bytes_per_node=args.max_node_log_bytes_per_node,
            max_node_events_per_node=args.max_node_events_per_node,
            max_node_event_bytes_per_node=args.max_node_event_bytes_per_node,
            max_node_event_bytes=args.max_node_event_bytes,
            max_monitor_bytes_per_node=args.max_monitor_bytes_per_node,
            max_monitor_bytes_total=args.max_monitor_bytes_total,
            max_dead_letters_per_node=args.max_dead_letters_per_node,
            audit_max_age_days=args.audit_max_age_days,
            max_audit_records=args.max_audit_records,
            max_pending_evt_bytes=args.max_pending_evt_bytes,
            allowed_origins=tuple(args.allowed_origin), ws_max_queue=args.ws_max_queue,
            ws_max_queue_bytes=args.ws_max_queue_bytes,
            downlink_check_s=args.downlink_check_s,
            metrics_require_token=args.metrics_require_token,
            **controller_rtc_config(args), **controller_bundle_config(args)))
    if admin_cli.handles(noun, verb):
        return admin_cli.run(args)
    if noun == "join-token":
        return op.join_token_create(args)
    if noun == "node":
        return _node(args, verb)
    if noun == "sidecar":
        from tether.common.loopback_http import check_loopback
        from tether.sidecar.config import SidecarConfig
        from tether.sidecar.main import run_sidecar

        check_loopback(args.status_host)
        return run_sidecar(SidecarConfig(state_dir=args.state_dir,
                                         controller_url=args.controller_url,
                                         status_host=args.status_host,
                                         status_port=args.status_port, proxy=args.proxy,
                                         ca_file=args.ca_file,
                                         pins=tuple(args.pin_sha256)))
    if noun == "nodes":
        return op.nodes_list(args) if verb == "list" else op.nodes_show(args)
    if noun == "exec":
        return op.exec_command(args)
    if noun == "bundle" and verb in REMOTE_VERBS:
        return bundle_remote_command(args)
    if noun == "rollout":
        from .rollout import rollout_command

        return rollout_command(args)
    if noun == "app":
        from .app_deploy import app_command

        return app_command(args)
    if noun == "jobs":
        from .jobs import jobs_command

        return jobs_command(args)
    if noun == "shell":
        return op.shell_command(args)
    if noun == "bundle" and verb == "build-runtime":
        return build_runtime_command(args)
    if noun == "bundle":
        from .bundle import bundle_command

        return bundle_command(args)
    if noun == "cp":
        from .cp import cp_command

        return cp_command(args, op.api_from)
    if noun == "commands" and verb == "list":
        return commands_list(args)
    if noun == "commands":
        return op.commands_show(args) if verb == "show" else op.commands_control(args)
    if noun == "context":
        return context_command(args)
    if noun == "logs":
        return op.logs_command(args)
    if noun == "bench":
        from tether.tools.bench import run

        return run(args)
    if noun == "sim":
        from .sim import run_sim

        return run_sim(args, op.api_from)
    if noun == "diag":
        return _diag(args, verb)
    if noun == "demo":
        from .demo import run_demo

        return run_demo(args)
    raise CliError(f"unknown command {noun}", 2)


def _diag(args: argparse.Namespace, verb: str) -> int:
    """Run one diag probe. ``ws`` prints its step report and exits with the failed step's
    code; ``route`` and ``controller`` exit 1 with one stderr line (what failed; what to
    check next) when the controller cannot be asked at all, and wait at most ``--timeout``
    per request, so a blackholed route fails instead of hanging."""
    import asyncio

    from tether.tools.diag.report import StepFailed
    from tether.tools.diag.route import ControllerApi, route, route_table
    from tether.tools.diag.ws import probe

    if verb == "ws":
        node_key, node_id = args.node_key, args.node_id
        if args.state_dir is not None:
            meta = json.loads((args.state_dir / "node.json").read_text())
            node_key = node_key or args.state_dir / "node.key"
            node_id = node_id or meta["node_id"]
        if (node_key is None) != (node_id is None):
            raise CliError("--node-key and --node-id go together (or use --state-dir)", 2)
        report = asyncio.run(probe(args.url, node_id=node_id, node_key=node_key,
                                   state_dir=args.state_dir, ca_file=args.ca_file,
                                   pins=tuple(args.pin_sha256), proxy=args.proxy,
                                   timeout_s=args.timeout))
        print(report.as_json() if args.json else report.as_table())
        return report.exit_code
    if verb == "node":  # the node's screen, and an exit code that says what is wrong
        from tether.node.status import node_status
        from tether.tools.diag.node import node_verdict

        status = node_status(args.state_dir)
        verdict = node_verdict(status)
        if args.json:
            print(json.dumps({**status, "ok": verdict.ok, "exit_code": verdict.exit_code,
                              "problem": verdict.problem}, indent=2))
        elif status.get("enrolled"):
            _print_node_status(status)
        if verdict.problem:
            print_error(args, "node_problem", verdict.problem, verdict.exit_code)
        return verdict.exit_code
    if verb not in ("route", "controller"):
        raise CliError(f"unknown diag probe {verb}", 2)
    if not args.timeout > 0:
        raise CliError(f"--timeout must be a positive number of seconds, got {args.timeout}",
                       2)
    api = op.api_from(args)

    async def diag_info() -> dict[str, Any]:
        async with ControllerApi.open(api.url, api.token, timeout_s=args.timeout,
                                      verify=api.verify) as ctl:
            return await ctl.get("/api/v1/diag")

    try:
        if verb == "route":
            result = asyncio.run(route(api.url, api.token, args.node, count=args.count,
                                       interval_s=args.interval, timeout_s=args.timeout,
                                       verify=api.verify))
        else:
            info = asyncio.run(diag_info())
    except StepFailed as exc:
        raise CliError(f"{exc.message}; {exc.hint}") from None
    if verb == "route":
        print(json.dumps(result, indent=2) if args.json else route_table(result))
        return 0 if result["ok"] else 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    try:
        s, st, w, lp = info["sessions"], info["store"], info["ws"], info["event_loop"]
        lines = [
            f"controller  {info['controller_id']}  v{info['version']}  up {info['uptime_s']} s",
            f"sessions    {s['open']} open, {s['handshaking']} handshaking, "
            f"{s.get('waiting', 0)} waiting, {s.get('refused_total', 0)} refused (4429); nodes "
            + ", ".join(f"{k} {v}" for k, v in sorted(s["nodes_by_liveness"].items())),
            f"store       read {st['read_ms']} ms, commit {st['commit_ms']} ms "
            f"({st['durability']}), write queue {st['write_queue']}, "
            f"{st['writes_total']} writes in {st['batches_total']} batches",
            f"/ws         {w['subscribers']} subscribers, {w['cut_off_total']} cut off, "
            f"{w['events_published_total']} events",
            f"event loop  lag {lp['lag_ms']} ms (max {lp['lag_max_ms']} ms)"
            + (f", {lp['tasks']} tasks" if lp.get("tasks") is not None else "")]
        cluster = info.get("cluster") or {}
        if cluster.get("nats") is not None:
            n = cluster["nats"]
            lines.append(
                f"cluster     {'leader' if cluster['leader'] else 'not leader'}; NATS "
                f"{'connected' if n['connected'] else 'DISCONNECTED'}, "
                f"{n['reconnects_total']} reconnects, {n['queued']} queued, "
                f"{n['dropped_total']} dropped; {cluster['downlink_wakes_total']} "
                "downlink wakes")
    except (KeyError, TypeError, AttributeError) as exc:
        raise CliError(f"{api.url}/api/v1/diag answered in a shape this CLI does not know "
                       f"({exc!r}): is the controller another version? --json shows what it "
                       "sent") from None
    print("\n".join(lines))
    return 0


def _node(args: argparse.Namespace, verb: str) -> int:
    if verb == "enroll":
        from tether.node.identity import check_transport, enroll

        transport = {"fallback_urls": args.fallback_url, "ca_file": args.ca_file,
                     "pins": args.pin_sha256, "proxy": args.proxy}
        try:  # a usage error (exit 2): a pin or CA bundle over plain http means nothing
            check_transport(args.controller, transport)
        except TetherError as exc:
            raise CliError(exc.message, 2) from None
        ident = enroll(controller_url=args.controller, join_token=args.token,
                       node_id=args.node_id, state_dir=args.state_dir,
                       labels=op.parse_labels(args.label), transport=transport)
        print(f"enrolled {ident.node_id} with {ident.controller_url} "
              f"(key in {args.state_dir / 'node.key'})")
        return 0
    if verb == "run":
        from tether.common.loopback_http import check_loopback
        from tether.node.config import NodeConfig
        from tether.node.main import run_node

        check_loopback(args.status_host)
        return run_node(NodeConfig(state_dir=args.state_dir, durability=args.durability,
                                   controller_url=args.controller_url,
                                   max_concurrent=args.max_concurrent,
                                   policy_path=args.policy,
                                   status_host=args.status_host,
                                   status_port=args.status_port,
                                   io_lease_s=args.io_lease_s,
                                   supervised=args.supervised,
                                   **rtc_config(args)))
    if verb == "supervise":
        return supervise_command(args)
    if verb == "publish":
        return op.node_publish(args)
    if verb == "trust":
        from .bundle import trust_command

        return trust_command(args)
    if verb in ("stop", "restart"):
        from tether.node.control import restart_node, stop_node

        message = (stop_node if verb == "stop" else restart_node)(args.state_dir)
        print(message)
        return 0
    from tether.node.status import node_status

    status = node_status(args.state_dir)
    if args.json:
        print(json.dumps(status, indent=2))
        if not status.get("enrolled"):
            return print_error(args, "not_enrolled", f"no node enrolled in {args.state_dir}", 1)
        return 0
    if not status.get("enrolled"):
        print(f"no node enrolled in {args.state_dir}")
        return 1
    _print_node_status(status)
    return 0


def _print_node_status(status: dict[str, Any]) -> None:
    """The node's screen (``node status``, ``diag node``) for an enrolled node. Every line
    goes through terminal_safe: close reasons and incidents quote the controller."""

    transport = status.get("transport") or {}
    runtime = status["runtime"]
    _line(f"node        {status['node_id']}  ->  {status['controller']}")
    running = f"running, pid {runtime['pid']}" if runtime["running"] else "stopped"
    _line(f"runtime     {running}")
    side = status.get("sidecar_process")
    _line(f"sidecar     {'running, pid ' + str(side['pid']) if side else 'not running'}")
    if transport:
        t = {k: human(v) for k, v in transport.items()}
        _line(f"transport   {t.get('state', '-')}  session {t.get('session_id', '-')}"
              f"  reconnects {t.get('reconnects', '-')}  rtt {t.get('rtt_ms', '-')} ms"
              f"  clock offset {t.get('clock_offset_ms', '-')} ms")
        close = (f"{t['last_close_code']} {transport.get('last_close_reason') or ''}".strip()
                 if transport.get("last_close_code") is not None else "none")
        _line(f"last close  {close}  backoff {t.get('backoff_s', '-')} s")
    tree = status.get("readiness")
    if tree:
        _line(f"ready       {'yes' if tree['ready'] else 'no: ' + '; '.join(tree['reasons'])}")
        for part in ("transport", "control_authority", "store", "executors"):
            node = tree[part]
            _line(f"  {part:<18} {'ok ' if node['ok'] else 'BAD'} {node['state']}")
        _line("allowed now:")
        for op_name, rule in status["matrix"].items():
            verdict = "yes" if rule["allowed"] else f"no ({rule['reason']})"
            _line(f"  {op_name:<18} {verdict}")
    outbox = status.get("outbox") or {}
    oldest = outbox.get("oldest_age_s")
    _line(f"outbox      {human(outbox.get('depth', 0))} unacked"
          + (f" (oldest {human(oldest)} s)" if oldest is not None else ""))
    _line(f"commands    {human(status.get('commands')) if status.get('commands') else 'none'}")
    for text in rtc_lines(status.get("rtc")):
        _line(text)
    for name, b in sorted((status.get("bundles") or {}).items()):
        _line(f"bundle      {name}  active {b.get('active') or '-'}  last known good "
              f"{b.get('last_known_good') or '-'}  {b.get('state') or ''} "
              f"{b.get('version') or ''}  {b.get('reason') or ''}".rstrip())
    for inc in (status.get("live_incidents") or [])[-5:]:
        _line(f"incident    [{inc['class']}] {inc['message']}")
    for inc in (status.get("incidents") or [])[:5]:
        _line(f"stored      [{inc['class']}] {inc['message']}")


def _line(text: str) -> None:
    print(terminal_safe(text))


if __name__ == "__main__":
    sys.exit(main())

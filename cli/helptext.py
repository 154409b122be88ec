"""Help for the flags cli/main.py declares without one, applied once the parser is built.

Kept here rather than on each ``add_argument`` line so that adding it did not rewrite lines
of cli/main.py that other work was changing at the same time; new flags carry their help
where they are declared (tests/cli/test_help.py fails on a flag without help).
"""

from __future__ import annotations

import argparse

STATE_DIR = "the node's state dir (env TETHER_STATE_DIR; default .tether/node)"
CA_FILE = "CA bundle to trust for the controller's TLS (default: the system store)"
PIN = ("accept only a controller certificate with this SHA-256 (hex of its DER form; "
       "repeatable, for rotation)")
JSON = "print JSON instead of a table (errors too, on stderr)"

# "<command path> <dest>" -> help
HELP: dict[str, str] = {
    "tether log_format": "log lines as text or one JSON object per line "
                         "(env TETHER_LOG_FORMAT)",
    "tether log_level": "debug, info, warning or error (env TETHER_LOG_LEVEL; default info)",
    "tether controller serve host": "address to listen on (env TETHER_HOST; default "
                                    "127.0.0.1)",
    "tether controller serve port": "port to listen on, 0 for a free one (env TETHER_PORT; "
                                    "default 8700)",
    "tether controller serve data_dir": "where the SQLite store, admin.token and "
                                        "controller.url live (env TETHER_DATA_DIR)",
    "tether controller serve tls_cert": "PEM certificate (chain): serve https:// and wss://",
    "tether controller serve tls_key": "PEM private key of --tls-cert",
    "tether controller serve heartbeat_s": "seconds between a node's heartbeats (default 15)",
    "tether controller serve stale_after_s": "a node unheard this long is stale (default 60)",
    "tether controller serve offline_after_s": "a node unheard this long is offline "
                                               "(default 300)",
    "tether controller serve ws_max_queue_bytes": "bytes queued per /ws client before a "
                                                  "slow one is cut off (default 16 MiB)",
    "tether join-token create uses": "how many nodes may enroll with it (default 1)",
    "tether node enroll node_id": "this node's id, [a-z0-9][a-z0-9-]{0,62}",
    "tether node enroll label": "k=v label for this node (repeatable)",
    "tether node enroll state_dir": STATE_DIR,
    "tether node run state_dir": STATE_DIR,
    "tether node run durability": "fsync: an ack survives power loss (default); process: "
                                  "survives a crash of the process only",
    "tether node run max_concurrent": "commands running at once (default 16)",
    "tether node stop state_dir": STATE_DIR,
    "tether node restart state_dir": STATE_DIR,
    "tether node publish topic": "the monitor topic, e.g. temperature",
    "tether node publish state_dir": STATE_DIR,
    "tether node status state_dir": STATE_DIR,
    "tether node status json": JSON,
    "tether sidecar run state_dir": STATE_DIR,
    "tether sidecar run ca_file": CA_FILE,
    "tether sidecar run pin_sha256": PIN,
    "tether sidecar run status_host": "loopback address for its /status",
    "tether sidecar run status_port": "0 picks a free port (written to "
                                      "<state-dir>/sidecar.status.url)",
    "tether nodes show node_id": "the node's id",
    # verbs of the auth and shell work, declared in cli/admin.py and cli/main.py
    "tether nodes delete node_id": "the node's id",
    "tether nodes disable node_id": "the node's id",
    "tether nodes enable node_id": "the node's id",
    "tether shell node": "the node to open the shell on",
    "tether exec argv": "-- then the command and its arguments, run without a shell",
    "tether jobs show job_id": "the job's id",
    "tether jobs cancel job_id": "the job's id",
    "tether logs command_id": "the command's id (c_...)",
    "tether diag ws node_id": "say hello as this node (with --node-key)",
    "tether diag ws ca_file": CA_FILE,
    "tether diag ws pin_sha256": PIN,
    "tether diag ws proxy": "HTTP CONNECT proxy URL (default: HTTPS_PROXY)",
    "tether diag ws json": JSON,
    "tether diag route node": "the node to ping",
    "tether diag route count": "how many pings (default 20)",
    "tether diag route interval": "seconds between pings (default 0.2)",
    "tether diag node state_dir": STATE_DIR,
    "tether diag node json": JSON,
    "tether sim nodes": "how many simulated nodes (default 100)",
    "tether demo nodes": "how many local nodes (default 1)",
    "tether demo port": "the controller's port (default 8700)",
    "tether demo dir": "where the demo keeps its controller and nodes (default .tether)",
}


def fill_help(parser: argparse.ArgumentParser, path: str = "tether") -> None:
    """Give every action of ``parser`` and its subcommands that has no help the one in
    :data:`HELP` (help set where a flag is declared wins)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                fill_help(sub, f"{path} {name}")
        elif not action.help:
            action.help = HELP.get(f"{path} {action.dest}")

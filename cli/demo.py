"""``tether demo``: a controller and N local nodes on loopback, until Ctrl-C.

Child processes are this process's to own: each is started, watched, and on exit terminated
(SIGTERM, then SIGKILL after 10 s) and awaited.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from .client import Api, CliError

READY_TIMEOUT_S = 30.0


def _tether(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli.main", *args]


def _wait_for(predicate: object, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        for proc in procs:
            if proc.poll() is not None:
                raise CliError(f"{what}: a child process exited with {proc.returncode}; "
                               "see its messages above")
        time.sleep(0.1)
    raise CliError(f"timed out waiting for {what}")


def run_demo(args: argparse.Namespace) -> int:
    base: Path = args.dir
    ctl_dir = base / "controller"
    procs: list[subprocess.Popen[bytes]] = []
    stop = {"flag": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        (ctl_dir / "controller.url").unlink(missing_ok=True)
        procs.append(subprocess.Popen(_tether("controller", "serve", "--data-dir", str(ctl_dir),
                                              "--port", str(args.port))))
        _wait_for(lambda: (ctl_dir / "controller.url").exists(), "the controller", procs)
        url = (ctl_dir / "controller.url").read_text().strip()
        token = (ctl_dir / "admin.token").read_text().strip()
        api = Api(url=url, token=token)
        names = ["demo-node"] if args.nodes == 1 else [f"demo-node-{i}"
                                                       for i in range(1, args.nodes + 1)]
        join = api.post("/api/v1/join-tokens", json={"ttl_s": 600, "uses": len(names),
                                                     "labels": {"demo": "true"}})["token"]
        for name in names:
            state_dir = base / ("node" if args.nodes == 1 else name)
            if not (state_dir / "node.json").exists():
                subprocess.run(_tether("node", "enroll", "--controller", url, "--token", join,
                                       "--node-id", name, "--state-dir", str(state_dir)),
                               check=True)
            procs.append(subprocess.Popen(_tether("node", "run", "--state-dir", str(state_dir),
                                                  "--controller-url", url)))

        def all_online() -> bool:
            items = api.get("/api/v1/nodes")["items"]
            return sum(1 for n in items if n["node_id"] in names
                       and n["liveness"] == "online") == len(names)

        _wait_for(all_online, "the nodes to come online", procs)
        print(f"""
Tether demo is running.
  controller   {url}
  admin token  {token}
  nodes        {', '.join(names)} (online)

Try, in another terminal in this directory:
  .venv/bin/tether nodes list
  .venv/bin/tether exec {names[0]} -- echo hi

Ctrl-C stops everything.
""", flush=True)
        while not stop["flag"]:
            for proc in procs:
                if proc.poll() is not None:
                    raise CliError(f"a demo process exited with {proc.returncode}")
            time.sleep(0.2)
        return 0
    except subprocess.CalledProcessError as exc:
        raise CliError(f"enrolling a demo node failed ({exc.returncode})") from None
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

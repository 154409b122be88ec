"""Fleet-wide commands: ``tether exec -l k=v -- ARGV`` (a job), ``tether jobs
list|show|cancel``, and the node filter of ``tether nodes list``.

``exec -l`` follows the job on ``/ws`` (``job:<id>``): as each node's command gets an id,
its output is followed (``logs:<id>``) and written with each line prefixed by the node's
id; when the node's part ends, whatever the live stream missed is fetched over REST
(cli/output.py's Rule 1: each byte once, in order, per node). At the end a summary table
says succeeded / failed / offline / skipped for each node; the exit status is 1 when any
node's part did not succeed (failed, offline, cancelled, expired, rejected), else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import IO, Any, cast

import websockets
from websockets.asyncio.client import connect

from tether.common.terminal import terminal_safe
from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.frames import Frame

from .client import Api, CliError
from .operator import api_from, parse_duration, parse_labels, print_table
from .output import OutputWriter, _expect

PART_DONE = {"succeeded", "failed", "cancelled", "expired", "rejected", "offline",
             "skipped"}
OK_STATES = {"succeeded", "skipped"}
MAX_LIVE_NODES = 120  # nodes followed live on one /ws (2 topics each, 256 at most); the
# others' output is written from REST when they end


class PrefixedLines:
    """A binary stream that writes each complete line to ``out`` prefixed with
    ``prefix``; a partial line waits for its end (or :meth:`close`)."""

    def __init__(self, out: IO[bytes], prefix: bytes) -> None:
        self._out = out
        self._prefix = prefix
        self._partial = b""

    def write(self, data: bytes) -> int:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._out.write(self._prefix + line + b"\n")
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        if self._partial:
            self._out.write(self._prefix + self._partial + b"\n")
            self._partial = b""
        self._out.flush()


def selector_body(args: argparse.Namespace) -> dict[str, Any]:
    """The job's target from ``-l k=v`` (repeatable) and ``--liveness`` (repeatable)."""
    selector: dict[str, Any] = {"labels": parse_labels(args.label)}
    if args.liveness:
        selector["liveness"] = args.liveness
    return selector


class JobFollower:
    """Writes each node's output of a job with its id as prefix (module docstring)."""

    def __init__(self, api: Api, job_id: str) -> None:
        self.api = api
        self.job_id = job_id
        self.writers: dict[str, OutputWriter] = {}
        self.streams: dict[str, tuple[PrefixedLines, PrefixedLines]] = {}
        self.by_command: dict[str, str] = {}
        self.finished: set[str] = set()
        self.job: dict[str, Any] = {}

    def _writer(self, node_id: str) -> OutputWriter:
        if node_id not in self.writers:
            prefix = terminal_safe(node_id).encode() + b" | "
            out = PrefixedLines(sys.stdout.buffer, prefix)
            err = PrefixedLines(sys.stderr.buffer, prefix)
            self.streams[node_id] = (out, err)
            self.writers[node_id] = OutputWriter(cast(IO[bytes], out), cast(IO[bytes], err))
        return self.writers[node_id]

    def _finish(self, node_id: str, command_id: str | None) -> None:
        """A part ended: write what the live stream missed, then its partial lines."""
        if node_id in self.finished:
            return
        self.finished.add(node_id)
        if command_id is not None:
            self._writer(node_id).catch_up(self.api, command_id)
        for stream in self.streams.get(node_id, ()):
            stream.close()

    async def _parts(self, nodes: dict[str, Any], ws: Any) -> None:
        new_topics = []
        for node_id, part in nodes.items():
            command_id = part.get("command_id")
            if command_id and command_id not in self.by_command:
                self.by_command[command_id] = node_id
                if len(self.by_command) <= MAX_LIVE_NODES:
                    new_topics.append(f"logs:{command_id}")
            if part.get("state") in PART_DONE:
                await asyncio.to_thread(self._finish, node_id, command_id)
        if new_topics:
            await ws.send(encode_json(Frame(t="subscribe", b={"topics": new_topics})))

    async def run(self) -> dict[str, Any]:
        """Follow until the job is no longer running; returns the final job."""
        for attempt in range(30):
            try:
                async with connect(self.api.ws_url, subprotocols=[JSON_SUBPROTOCOL],  # type: ignore[list-item]
                                   open_timeout=10, close_timeout=2, **self.api.ws_kwargs) as ws:
                    await ws.send(encode_json(Frame(t="hello", b={"token": self.api.token})))
                    await _expect(ws, "welcome")
                    await ws.send(encode_json(Frame(t="subscribe", id="job", b={
                        "topics": [f"job:{self.job_id}"]})))
                    await _expect(ws, "subscribed")
                    # what happened before the subscription: read it once, over REST
                    self.job = await asyncio.to_thread(
                        self.api.get, f"/api/v1/jobs/{self.job_id}")
                    await self._parts(self.job["nodes"], ws)
                    while self.job["state"] == "running":
                        async with asyncio.timeout(60):
                            frame = decode_json(await ws.recv())
                        if frame.t != "event":
                            continue
                        topic, data = str(frame.b.get("topic")), frame.b.get("data") or {}
                        if frame.b.get("kind") == "job.updated":
                            self.job["state"] = data.get("state", self.job["state"])
                            self.job["nodes"].update(data.get("nodes") or {})
                            await self._parts(data.get("nodes") or {}, ws)
                        elif frame.b.get("kind") == "log.chunk":
                            node_id = self.by_command.get(topic.partition(":")[2])
                            if node_id is not None and node_id not in self.finished:
                                self._writer(node_id).emit([data], stop_at_gap=True)
                    final: dict[str, Any] = await asyncio.to_thread(
                        self.api.get, f"/api/v1/jobs/{self.job_id}")
                    for node_id, part in final["nodes"].items():
                        await asyncio.to_thread(self._finish, node_id, part.get("command_id"))
                    return final
            except (websockets.ConnectionClosed, OSError, TimeoutError,
                    websockets.InvalidHandshake):
                await asyncio.sleep(min(2.0, 0.1 * (attempt + 1)))
        raise CliError(f"lost the live stream from {self.api.ws_url}; see 'tether jobs show "
                       f"{self.job_id}'")


def summary_rows(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"node": node_id, "result": part.get("state"), "command": part.get("command_id"),
             "detail": part.get("detail")}
            for node_id, part in sorted((job.get("nodes") or {}).items())]


def exec_on_many(args: argparse.Namespace, argv: list[str]) -> int:
    """``tether exec -l k=v [--liveness S] -- ARGV``: a job over the selected nodes."""
    api = api_from(args)
    body: dict[str, Any] = {"selector": selector_body(args), "kind": "exec",
                            "args": {"argv": argv}, "offline": args.offline}
    if args.timeout is not None:
        body["args"]["timeout_s"] = parse_duration(args.timeout)
    if args.ttl is not None:
        body["ttl_s"] = parse_duration(args.ttl)
    if args.max_in_flight is not None:
        body["max_in_flight"] = args.max_in_flight
    job = api.post("/api/v1/jobs", json=body)
    if args.no_wait:
        print(job["job_id"])
        return 0
    try:
        final = asyncio.run(JobFollower(api, job["job_id"]).run())
    except KeyboardInterrupt:
        print(f"\ndetached; the job goes on: tether jobs show {job['job_id']}",
              file=sys.stderr)
        return 130
    sys.stdout.flush()
    print("", file=sys.stderr)
    rows = summary_rows(final)
    _table_to(sys.stderr, rows, ["node", "result", "command", "detail"])
    bad = [r for r in rows if r["result"] not in OK_STATES]
    print(f"job {final['job_id']}: {len(rows) - len(bad)} of {len(rows)} node(s) ok",
          file=sys.stderr)
    return 1 if bad else 0


def _table_to(stream: IO[str], rows: list[dict[str, Any]], columns: list[str]) -> None:
    stdout, sys.stdout = sys.stdout, stream
    try:
        print_table(rows, columns)
    finally:
        sys.stdout = stdout


def jobs_command(args: argparse.Namespace) -> int:
    """``tether jobs list|show|cancel``."""
    api = api_from(args)
    if args.verb == "list":
        items = api.get("/api/v1/jobs", params={"limit": args.limit})["items"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        print_table([{"job": j["job_id"], "state": j["state"], "kind": j["kind"],
                      "created": j.get("created_at"),
                      "summary": ", ".join(f"{k} {v}" for k, v in j["summary"].items())}
                     for j in items], ["job", "state", "kind", "created", "summary"])
        return 0
    if args.verb == "cancel":
        job = api.post(f"/api/v1/jobs/{args.job_id}/cancel")
    else:
        job = api.get(f"/api/v1/jobs/{args.job_id}")
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    for key in ("job_id", "state", "kind", "args", "selector", "offline", "max_in_flight",
                "created_at", "finished_at"):
        value = job.get(key)
        print(f"{key:<13} {terminal_safe(value) if value is not None else '-'}")
    print("summary       " + (", ".join(f"{k} {v}" for k, v in job["summary"].items()) or "-"))
    print_table(summary_rows(job), ["node", "result", "command", "detail"])
    return 0


def nodes_filter_params(args: argparse.Namespace) -> dict[str, Any]:
    """``nodes list -l k=v --liveness S``: the server-side filter's query parameters."""
    params: dict[str, Any] = {}
    labels = parse_labels(getattr(args, "label", None))
    if labels:
        params["label"] = [f"{k}={v}" for k, v in labels.items()]
    if getattr(args, "liveness", None):
        params["liveness"] = ",".join(args.liveness)
    return params

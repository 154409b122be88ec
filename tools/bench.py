"""``tether bench core``: end-to-end class-A throughput and command round trip on loopback.

A controller runs as its own process; N simulated nodes are real :class:`NodeRuntime`
instances (real SQLite stores, real links) in this process. Figures:

* ``acked_throughput``: ``node.event`` frames per second from "appended to the node outbox"
  to "acked by the controller", i.e. persisted on both sides (group commit on both), per
  durability mode;
* ``command_rtt``: operator ``POST diag.ping`` -> ``succeeded`` pushed on /ws (the status
  persisted by the controller), p50/p99 at a fixed open-loop rate.

Output: a table, or ``--json`` / ``--out FILE`` with ``{"machine": ..., "results": [...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
from websockets.asyncio.client import connect

from tether.common import __version__
from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.frames import Frame

RTT_RATE_PER_S = 100


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class _Controller:
    def __init__(self, root: Path, durability: str) -> None:
        self.dir = root / f"controller-{durability}"
        self.durability = durability
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.dir.mkdir(parents=True)
        with open(self.dir / "controller.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "tether.cli.main", "--log-level", "warning",
                 "controller", "serve", "--port", "0", "--data-dir", str(self.dir),
                 "--durability", self.durability], stdout=log, stderr=subprocess.STDOUT)

    async def __aenter__(self) -> _Controller:
        self.proc = self._spawn()
        url_file = self.dir / "controller.url"
        async with asyncio.timeout(30):
            while not url_file.exists():
                if self.proc.poll() is not None:
                    raise RuntimeError((self.dir / "controller.log").read_text())
                await asyncio.sleep(0.05)
        self.url = url_file.read_text().strip()
        self.token = (self.dir / "admin.token").read_text().strip()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _start_nodes(ctl: _Controller, root: Path, count: int, durability: str,
                       tg: asyncio.TaskGroup, stop: asyncio.Event) -> list[Any]:
    from tether.node.config import NodeConfig
    from tether.node.identity import enroll
    from tether.node.runtime import NodeRuntime

    async with httpx.AsyncClient(base_url=ctl.url, timeout=15,
                                 headers={"Authorization": f"Bearer {ctl.token}"}) as http:
        resp = await http.post("/api/v1/join-tokens", json={"uses": count})
        resp.raise_for_status()
        token = resp.json()["token"]
    runtimes = []
    for i in range(count):
        state_dir = root / f"node-{durability}-{i}"
        ident = await asyncio.to_thread(enroll, controller_url=ctl.url, join_token=token,
                                        node_id=f"bench-{i}", state_dir=state_dir)
        rt = NodeRuntime(NodeConfig(state_dir=state_dir, durability=durability), ident)
        tg.create_task(rt.run(stop), name=f"bench-node-{i}")
        runtimes.append(rt)
    async with asyncio.timeout(30):
        for rt in runtimes:
            await rt.link.connected.wait()
    return runtimes


async def _throughput(runtimes: list[Any], frames_per_node: int) -> dict[str, float]:
    payload = {"v": "x" * 48}

    async def produce(rt: Any) -> None:
        batch = 256
        for start in range(0, frames_per_node, batch):
            await asyncio.gather(*[rt.emit_event("bench", payload)
                                   for _ in range(min(batch, frames_per_node - start))])

    start = time.perf_counter()
    await asyncio.gather(*[produce(rt) for rt in runtimes])
    async with asyncio.timeout(300):
        while any(rt.evt.acked < rt.evt.last for rt in runtimes):
            await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    total = frames_per_node * len(runtimes)
    return {"frames": total, "seconds": elapsed, "msgs_per_s": total / elapsed}


async def _command_rtt(ctl: _Controller, node_id: str, count: int,
                       rate_per_s: float) -> dict[str, float]:
    done: dict[str, float] = {}
    sent: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[None]] = {}
    async with connect(ctl.url.replace("http", "ws", 1) + "/ws",
                       subprotocols=[JSON_SUBPROTOCOL]) as ws:  # type: ignore[list-item]
        await ws.send(encode_json(Frame(t="hello", b={"token": ctl.token})))
        await ws.recv()
        await ws.send(encode_json(Frame(t="subscribe", b={"topics": [f"commands:{node_id}"]})))
        while decode_json(await ws.recv()).t != "subscribed":  # skip the snapshot
            pass

        async def reader() -> None:
            while True:
                frame = decode_json(await ws.recv())
                data = frame.b.get("data") or {}
                if data.get("state") == "succeeded":
                    cid = data["command_id"]
                    done[cid] = time.perf_counter()
                    fut = waiters.get(cid)
                    if fut is not None and not fut.done():
                        fut.set_result(None)

        async with httpx.AsyncClient(base_url=ctl.url, timeout=15, headers={
                "Authorization": f"Bearer {ctl.token}"}) as http, asyncio.TaskGroup() as tg:
            read_task = tg.create_task(reader())

            async def one() -> None:
                t0 = time.perf_counter()
                resp = await http.post(f"/api/v1/nodes/{node_id}/commands",
                                       json={"kind": "diag.ping"})
                cid = resp.json()["command_id"]
                sent[cid] = t0
                if cid not in done:
                    fut = asyncio.get_running_loop().create_future()
                    waiters[cid] = fut
                    async with asyncio.timeout(30):
                        await fut

            interval = 1.0 / rate_per_s
            t_start = time.perf_counter()
            async with asyncio.TaskGroup() as shots:
                for i in range(count):
                    delay = t_start + i * interval - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    shots.create_task(one())
            read_task.cancel()
    rtts = [(done[c] - sent[c]) * 1000 for c in sent]
    return {"p50_ms": _percentile(rtts, 50), "p99_ms": _percentile(rtts, 99),
            "mean_ms": statistics.fmean(rtts), "count": len(rtts)}


async def _run_mode(root: Path, durability: str, nodes: int, frames: int,
                    commands: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with _Controller(root, durability) as ctl:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            runtimes = await _start_nodes(ctl, root, nodes, durability, tg, stop)
            try:
                tp = await _throughput(runtimes, frames)
                rtt = await _command_rtt(ctl, "bench-0", commands, RTT_RATE_PER_S)
            finally:
                stop.set()
    system = "tether" if durability == "fsync" else "tether-process"
    extra = {"durability": durability, "nodes": nodes}
    results.append({"benchmark": "acked_throughput", "system": system, "metric": "msgs_per_s",
                    "value": round(tp["msgs_per_s"], 1), "unit": "msgs/s",
                    "frames": tp["frames"], **extra})
    for metric in ("p50_ms", "p99_ms"):
        results.append({"benchmark": "command_rtt", "system": system, "metric": metric,
                        "value": round(rtt[metric], 3), "unit": "ms",
                        "rate_per_s": RTT_RATE_PER_S, "count": rtt["count"], **extra})
    return results


def _spawn_peer(peer: str, port_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tether.tools.bench_peers", peer,
                             "--port-file", str(port_file)])


async def _ws_raw(root: Path, frames: int, *, window: int = 64) -> float:
    """Raw websockets, no persistence: 100-byte msgpack frames, ``window`` in flight, one
    ack per message — the same shape as Tether's class A flow, minus durability."""
    port_file = root / "ws-echo.port"
    proc = _spawn_peer("ws-echo", port_file)
    try:
        async with asyncio.timeout(30):
            while not port_file.exists():
                await asyncio.sleep(0.02)
        port = int(port_file.read_text())
        body = {"kind": "bench", "data": {"v": "x" * 48}}
        async with connect(f"ws://127.0.0.1:{port}", compression=None,
                           max_size=1 << 20) as ws:
            credit = asyncio.Semaphore(window)
            acked = 0
            done = asyncio.Event()

            async def reader() -> None:
                nonlocal acked
                async for _ in ws:
                    acked += 1
                    credit.release()
                    if acked == frames:
                        done.set()
                        return

            start = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(reader())
                for q in range(1, frames + 1):
                    await credit.acquire()
                    await ws.send(msgpack.packb({"t": "node.event", "s": "evt", "q": q,
                                                 "b": body}))
                async with asyncio.timeout(120):
                    await done.wait()
            return frames / (time.perf_counter() - start)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


def _mosquitto(root: Path, frames: int, *, window: int = 64) -> float | str:
    """Mosquitto (Debian's, on loopback, no persistence) with paho-mqtt publisher and
    subscriber at QoS 1, ``window`` messages in flight: msgs/s from first publish to the
    subscriber's last delivery. Returns the reason instead of a figure when it cannot run."""
    import socket
    import threading

    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None)
    if binary is None:
        return "unavailable: mosquitto is not installed (apt-get install mosquitto)"
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        return "unavailable: paho-mqtt is not installed (pip install paho-mqtt)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\n")
    with open(root / "mosquitto.log", "wb") as log:
        broker = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or broker.poll() is not None:
                return "unavailable: mosquitto did not start (see its log)"
            time.sleep(0.05)
        received = 0
        all_in = threading.Event()
        subscribed = threading.Event()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            nonlocal received
            received += 1
            if received == frames:
                all_in.set()

        api = mqtt.CallbackAPIVersion.VERSION2
        sub = mqtt.Client(api, client_id="tether-bench-sub")
        sub.on_message = on_message
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        sub.subscribe("tether/bench", qos=1)
        pub = mqtt.Client(api, client_id="tether-bench-pub")
        pub.max_inflight_messages_set(window)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        try:
            if not subscribed.wait(10):
                return "unavailable: the subscriber was not acknowledged"
            payload = msgpack.packb({"t": "node.event", "s": "evt", "q": 1,
                                     "b": {"kind": "bench", "data": {"v": "x" * 48}}})
            start = time.perf_counter()
            for _ in range(frames):
                pub.publish("tether/bench", payload, qos=1)
            if not all_in.wait(300):
                return f"unavailable: only {received} of {frames} messages arrived"
            return frames / (time.perf_counter() - start)
        finally:
            for client in (pub, sub):
                client.loop_stop()
                client.disconnect()
    finally:
        broker.terminate()
        broker.wait(10)


def _machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "tether": __version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_core(args: argparse.Namespace) -> int:
    logging.getLogger("tether").setLevel(logging.WARNING)
    modes = ["fsync", "process"] if args.durability == "both" else [args.durability]
    root = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    results: list[dict[str, Any]] = []
    try:
        import uvloop

        for mode in modes:
            print(f"bench core: durability={mode}, {args.nodes} nodes x {args.frames} frames, "
                  f"{args.commands} pings at {RTT_RATE_PER_S}/s ...", file=sys.stderr)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                results += runner.run(_run_mode(root, mode, args.nodes, args.frames,
                                                args.commands))
        print("bench core: raw websockets echo, same frames, window 64 ...", file=sys.stderr)
        total = args.nodes * args.frames
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            raw = runner.run(_ws_raw(root, total))
        results.append({"benchmark": "acked_throughput", "system": "websockets-raw",
                        "metric": "msgs_per_s", "value": round(raw, 1), "unit": "msgs/s",
                        "frames": total, "window": 64, "durability": "none"})
        print("bench core: mosquitto QoS 1 with paho-mqtt, window 64 ...", file=sys.stderr)
        mosq = _mosquitto(root, total)
        if isinstance(mosq, str):
            results.append({"benchmark": "acked_throughput", "system": "mosquitto-qos1",
                            "metric": "msgs_per_s", "value": None, "unit": "msgs/s",
                            "note": mosq})
        else:
            results.append({"benchmark": "acked_throughput", "system": "mosquitto-qos1",
                            "metric": "msgs_per_s", "value": round(mosq, 1),
                            "unit": "msgs/s", "frames": total, "window": 64,
                            "durability": "none (broker persistence off)"})
        for row in [r for r in results if r["benchmark"] == "acked_throughput"
                    and r["system"].startswith("tether") and r["metric"] == "msgs_per_s"]:
            results.append({"benchmark": "acked_throughput", "system": row["system"],
                            "metric": "ratio_to_websockets_raw",
                            "value": round(row["value"] / raw, 3), "unit": "x"})
            if not isinstance(mosq, str):
                results.append({"benchmark": "acked_throughput", "system": row["system"],
                                "metric": "ratio_to_mosquitto_qos1",
                                "value": round(row["value"] / mosq, 3), "unit": "x"})
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
    report = {"machine": _machine(), "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'benchmark':<18} {'system':<15} {'metric':<11} {'value':>10}  unit")
        for r in results:
            value = r["value"] if r["value"] is not None else "-"
            print(f"{r['benchmark']:<18} {r['system']:<15} {r['metric']:<11} "
                  f"{value:>10}  {r['unit']}  {r.get('note', '')}".rstrip())
    return 0

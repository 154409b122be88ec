"""Asyncio task counts (issue 16, "resources stay flat"): each long-running process says how
many tasks its loop holds (``event_loop.tasks``: the controller's ``/api/v1/diag``, the
runtime's and the sidecar's loopback ``/status``; ``tether_asyncio_tasks`` and
``tether_node_asyncio_tasks`` in their ``/metrics``), and the soak's sampler files each
answer under the incarnation that gave it. Real processes on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from tether.tools.soak.driver import Soak, SoakConfig
from tether.tools.soak.procs import Controller, Node

from ..helpers import ControllerProc, NodeProc, parse_metrics, tether_cmd, until, wait_until

POLL_S = 0.2

PLAUSIBLE = range(1, 10_000)  # a live loop runs at least the task answering; no leak is 10k


def _tasks(body: dict[str, object]) -> object:
    loop = body["event_loop"]
    assert isinstance(loop, dict), body
    return loop["tasks"]


def test_the_controller_the_runtime_and_the_sidecar_report_their_live_task_counts(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-tasks")
    api = controller.api()
    diag = api.get("/api/v1/diag").json()
    assert _tasks(diag) in PLAUSIBLE
    assert parse_metrics(api.get("/metrics").text)["tether_asyncio_tasks"] in PLAUSIBLE
    out = subprocess.run(tether_cmd("diag", "controller", "--url", controller.url,
                                    "--token", controller.token),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and " tasks" in out.stdout, out.stdout + out.stderr

    runtime_url = (node.state_dir / "runtime.status.url").read_text().strip()
    status = httpx.get(runtime_url + "/status", timeout=5).json()
    assert _tasks(status) in PLAUSIBLE and status["pid"] == node.pid
    metrics = parse_metrics(httpx.get(runtime_url + "/metrics", timeout=5).text)
    assert metrics["tether_node_asyncio_tasks"] in PLAUSIBLE
    sidecar_url = wait_until(
        lambda: (node.state_dir / "sidecar.status.url").exists()
        and (node.state_dir / "sidecar.status.url").read_text().strip(), what="sidecar url")
    sidecar = httpx.get(f"{sidecar_url}/status", timeout=5).json()
    assert _tasks(sidecar) in PLAUSIBLE and sidecar["pid"] == node.sidecar_pid()
    # the status file the runtime keeps says the same (written on the loop)
    assert _tasks(json.loads((node.state_dir / "status.json").read_text())) in PLAUSIBLE


async def test_the_soak_files_each_task_count_under_the_incarnation_that_answered(
        tmp_path: Path) -> None:
    ctl = Controller("controller", tmp_path / "controller")
    node = Node("n-soak-tasks", tmp_path / "node", "")
    soak = Soak(SoakConfig(seconds=1, root=tmp_path))
    try:
        await ctl.start()
        node.controller_url = ctl.url
        headers = {"Authorization": f"Bearer {ctl.token}"}
        async with httpx.AsyncClient(timeout=10, headers=headers) as http, \
                httpx.AsyncClient(timeout=5) as local_http:
            token = (await http.post(ctl.url + "/api/v1/join-tokens",
                                     json={"uses": 1})).json()["token"]
            await node.enroll(ctl.url, token)
            await node.start()
            soak.controllers, soak.nodes = [ctl], [node]
            soak.http, soak.local_http = http, local_http
            series = soak.sampler.series

            def sampled() -> set[tuple[str, int | None]]:
                return {key for key, s in series.items() if s.points.get("tasks")}

            async def sample_until(want: set[tuple[str, int | None]]) -> None:
                """Sample rounds until ``want`` all hold a task count (30 s)."""
                async with asyncio.timeout(30):
                    while not want <= sampled():
                        await soak._sample_tasks()
                        await asyncio.sleep(POLL_S)

            first = node.pid
            assert first is not None
            await until(node.sidecar_pid, timeout_s=30)
            sidecar = node.sidecar_pid()
            await sample_until({("controller", ctl.pid), ("n-soak-tasks/runtime", first),
                                ("n-soak-tasks/sidecar", sidecar)})
            for s in series.values():
                assert all(int(v) in PLAUSIBLE for _, v in s.points["tasks"]), s

            await node.kill9()  # a new incarnation is a new curve, never the old one's
            await node.start()
            assert node.pid not in (None, first)
            await sample_until({("n-soak-tasks/runtime", node.pid)})
            assert len(series[("n-soak-tasks/runtime", first)].points["tasks"]) >= 1
    finally:
        await node.stop_all()
        await ctl.stop()


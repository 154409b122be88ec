"""Issue 13: the node exposes its own Prometheus metrics on its loopback status port
(node/metrics.py), and the controller's histograms see a real node's command."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ..helpers import ControllerProc, NodeProc, metric_types, parse_metrics, wait_until


def node_metrics(node: NodeProc) -> str:
    url = (node.state_dir / "runtime.status.url").read_text().strip()
    resp = httpx.get(url + "/metrics", timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return resp.text


def test_a_node_serves_its_runtime_figures_on_its_status_port(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-metrics")
    types = metric_types(node_metrics(node))
    for name, kind in {"tether_node_outbox_frames": "gauge",
                       "tether_node_cmd_applied": "counter",
                       "tether_node_reconnects": "counter",
                       "tether_node_sidecar_attached": "gauge",
                       "tether_node_link_state": "gauge",
                       "tether_node_incidents": "counter",
                       "tether_node_ready": "gauge"}.items():
        assert types.get(name) == kind, (name, types.get(name))

    api = controller.api()
    cmd = api.submit("n-metrics", "exec", {"argv": ["true"]})
    wait_until(lambda: api.command(cmd["command_id"])["state"] == "succeeded",
               timeout_s=30, what="the command to succeed")

    def settled() -> dict[str, float] | None:
        values = parse_metrics(node_metrics(node))
        return values if (values["tether_node_cmd_applied_total"] >= 1
                          and values["tether_node_outbox_frames"] == 0) else None
    values = wait_until(settled, timeout_s=30, what="the command applied, its status acked")
    assert values['tether_node_link_state{state="connected"}'] == 1
    assert values["tether_node_sidecar_attached"] == 1
    assert values["tether_node_ready"] == 1

    def observed() -> dict[str, float] | None:  # reported once the commit returned
        values = parse_metrics(api.get("/metrics").text)
        return values if values["tether_command_delivered_to_done_seconds_count"] else None
    controller_side = wait_until(observed, timeout_s=10, what="the command observed")
    assert controller_side["tether_command_queued_to_delivered_seconds_count"] == 1
    assert controller_side["tether_command_delivered_to_done_seconds_count"] == 1

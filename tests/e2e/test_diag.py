"""`tether diag ws`, `diag route` and `diag controller` against a live controller and node,
and failing helpfully against a dead port, a non-tether HTTP server, a wrong node key (or
operator token) and a blackholed route."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.protocol.signing import generate_private_key, private_key_raw

from ..helpers import ControllerProc, NodeProc, Proc, tether_cmd, wait_until
from .conftest import Backend
from .test_transport_options import free_port

# The probes whose answer comes from the controller's store or routing (the node's key, its
# session history, a ping routed to it, the session counts) run on both backends (tests/e2e/
# conftest.py); the client-side failure messages and the node's own screen on SQLite only.
both_backends = pytest.mark.both_backends


def diag(*args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(tether_cmd("diag", "ws", "--json", "--timeout", "3", *args),
                         capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout)


def failed_step(report: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in report["steps"] if not s["ok"])


@both_backends
def test_diag_ws_walks_every_step_to_a_heartbeat_with_a_node_key(
        controller: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-diag", "n-diag")
    node.enroll(controller)
    code, report = diag(controller.url, "--state-dir", str(node.state_dir))
    assert code == 0, report
    assert [s["name"] for s in report["steps"]] == ["dns", "tcp", "upgrade", "challenge",
                                                    "hello", "heartbeat"]
    hello = report["steps"][4]["detail"]
    assert hello["session_id"].startswith("s_") and hello["heartbeat_s"] > 0
    assert report["steps"][5]["detail"]["rtt_ms"] > 0
    sessions = controller.api().get("/api/v1/nodes/n-diag/sessions").json()["items"]
    assert sessions[0]["reason"] == "goodbye"  # the probe left cleanly


def test_diag_ws_against_a_dead_port_fails_at_tcp(tmp_path: Path) -> None:
    code, report = diag(f"http://127.0.0.1:{free_port()}")
    assert code == 11
    step = failed_step(report)
    assert step["name"] == "tcp" and "refused" in step["error"]
    assert "is the controller running" in step["hint"]


@pytest.fixture
def plain_http(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", str(tmp_path)], tmp_path / "http.log")
    proc.start()
    from .test_transport_options import _listening

    wait_until(lambda: _listening(port), what="the http server")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()


def test_diag_ws_against_a_non_tether_http_server_fails_at_the_upgrade(plain_http: str) -> None:
    code, report = diag(plain_http)
    assert code == 14
    step = failed_step(report)
    assert step["name"] == "upgrade"
    assert "not a Tether controller" in step["hint"] or "not look like" in step["hint"]


@both_backends
def test_diag_ws_with_a_key_the_controller_does_not_know_fails_at_hello(
        controller: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-wrongkey", "n-wrongkey")
    node.enroll(controller)
    stranger = tmp_path / "stranger.key"
    stranger.write_bytes(private_key_raw(generate_private_key()))
    code, report = diag(controller.url, "--node-id", "n-wrongkey", "--node-key",
                        str(stranger))
    assert code == 16
    step = failed_step(report)
    assert step["name"] == "hello" and "4401" in step["error"]
    assert "not enrolled on this controller" in step["hint"]


@pytest.fixture
def blackholed(controller: ControllerProc, tmp_path: Path) -> Iterator[str]:
    """The URL of a fault proxy in front of ``controller`` that accepts connections and
    swallows every byte (SIGUSR1 sent before it is yielded)."""
    port_file = tmp_path / "proxy.port"
    proxy = Proc([sys.executable, "-m", "tether.tools.faultproxy", "--upstream",
                  f"127.0.0.1:{controller.port}", "--port-file", str(port_file)],
                 tmp_path / "proxy.log")
    proxy.start()
    try:
        port = wait_until(lambda: port_file.exists() and port_file.read_text().strip(),
                          what="the fault proxy")
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGUSR1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proxy.terminate()


def test_diag_ws_through_a_blackholed_route_says_traffic_is_swallowed(blackholed: str) -> None:
    code, report = diag(blackholed)
    assert code == 14
    step = failed_step(report)
    assert step["name"] == "upgrade" and "swallows traffic" in step["hint"]
    assert next(s for s in report["steps"] if s["name"] == "tcp")["ok"]


def test_diag_ws_prints_a_table_by_default(controller: ControllerProc) -> None:
    out = subprocess.run(tether_cmd("diag", "ws", controller.url), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    assert [ln.split()[:2] for ln in out.stdout.splitlines()] == [
        ["ok", "dns"], ["ok", "tcp"], ["ok", "upgrade"], ["ok", "challenge"]]


def route_json(controller: ControllerProc, node_id: str, *extra: str) -> tuple[int, Any]:
    out = subprocess.run(tether_cmd("diag", "route", "--url", controller.url, "--token",
                                    controller.token, "--json", node_id, *extra),
                         capture_output=True, text=True, timeout=120)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else out.stderr


@both_backends
def test_diag_route_pings_through_the_controller_and_reports_each_hop(
        controller: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-route", "n-route")
    node.enroll(controller)
    node.start()
    try:
        api = controller.api()
        wait_until(lambda: api.liveness("n-route") == "online", what="online")
        code, result = route_json(controller, "n-route", "--count", "5", "--interval", "0.05")
        assert code == 0, result
        summary = result["summary"]
        assert (summary["sent"], summary["answered"], summary["loss_percent"]) == (5, 5, 0.0)
        assert summary["answered_by"] == "the node's runtime"
        assert 0 < summary["rtt_p50_ms"] <= summary["rtt_p99_ms"]
        for ping in result["pings"]:
            assert ping["rtt_ms"] > 0
            assert set(ping) >= {"operator_to_controller_ms", "controller_to_node_ms",
                                 "node_to_controller_ms"}
        # Only the sidecar left: the runtime is killed, pings are lost and it says why.
        node.kill9()
        wait_until(lambda: api.liveness("n-route") == "degraded", what="degraded")
        code, result = route_json(controller, "n-route", "--count", "2", "--timeout", "0.5")
        assert code == 1
        assert result["summary"]["loss_percent"] == 100.0
        assert "only the sidecar holds the session" in result["summary"]["answered_by"]
    finally:
        node.cleanup()


@both_backends
def test_diag_route_to_an_unknown_node_says_so(controller: ControllerProc) -> None:
    out = subprocess.run(tether_cmd("diag", "route", "--url", controller.url, "--token",
                                    controller.token, "ghost"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "'ghost' is not enrolled" in out.stderr


def test_diag_node_shows_the_node_screen(controller: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-dn", "n-dn")
    node.enroll(controller)
    node.start()
    try:
        wait_until(lambda: controller.api().liveness("n-dn") == "online", what="online")
        out = subprocess.run(tether_cmd("diag", "node", "--state-dir", str(node.state_dir)),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        for part in ("transport", "control_authority", "store", "executors", "outbox"):
            assert part in out.stdout
    finally:
        node.cleanup()


@both_backends
def test_diag_controller_reports_sessions_store_ws_and_loop_lag(
        controller: ControllerProc, backend: Backend, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-dc", "n-dc")
    node.enroll(controller)
    node.start()
    offline = NodeProc(tmp_path / "n-dc2", "n-dc2")
    offline.enroll(controller)
    try:
        wait_until(lambda: controller.api().liveness("n-dc") == "online", what="online")
        flags = ["--url", controller.url, "--token", controller.token]
        out = subprocess.run(tether_cmd("diag", "controller", *flags, "--json"),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["sessions"]["open"] == 1
        assert info["sessions"]["nodes_by_liveness"] == {"online": 1, "offline": 1}
        assert info["store"]["commit_ms"] > 0 and info["store"]["durability"] == backend.durability
        assert info["event_loop"]["lag_ms"] >= 0
        table = subprocess.run(tether_cmd("diag", "controller", *flags),
                               capture_output=True, text=True, timeout=60)
        assert "sessions    1 open" in table.stdout and "event loop  lag" in table.stdout
        cluster = info["cluster"]
        assert cluster["leader"] is True and cluster["downlink_wakes_total"] == 0
        if backend.name == "sqlite":  # no bus: no NATS figures, no cluster line
            assert cluster["nats"] is None and "cluster " not in table.stdout
        else:
            assert cluster["nats"]["connected"] == 1
            assert "cluster     leader; NATS connected" in table.stdout
        dead = subprocess.run(tether_cmd("diag", "controller", "--url",
                                         f"http://127.0.0.1:{free_port()}", "--token", "x"),
                              capture_output=True, text=True, timeout=60)
        assert dead.returncode == 1 and "cannot reach the controller" in dead.stderr
    finally:
        node.cleanup()


# -- diag route and diag controller failing helpfully -----------------------------------------

def operator_diag(verb: str, url: str, token: str, *extra: str
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tether_cmd("diag", verb, *extra, "--url", url, "--token", token,
                                     "--timeout", "2"),
                          capture_output=True, text=True, timeout=60)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The failure's stderr, checked to be exit 1 and a single ``error:`` line."""
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    return out.stderr


PROBES = [pytest.param(("route", "n-any"), id="route"),
          pytest.param(("controller",), id="controller")]


@pytest.mark.parametrize("probe", PROBES)
def test_diag_route_and_controller_against_a_dead_port_ask_whether_it_runs(
        probe: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    err = one_line_error(operator_diag(probe[0], url, "x", *probe[1:]))
    assert f"cannot reach the controller at {url} (connection refused)" in err
    assert f"is the controller running at {url}?" in err


@pytest.mark.parametrize("probe", PROBES)
def test_diag_route_and_controller_against_a_non_tether_http_server_say_so(
        probe: tuple[str, ...], plain_http: str) -> None:
    err = one_line_error(operator_diag(probe[0], plain_http, "x", *probe[1:]))
    assert f"this does not look like a Tether controller (HTTP 404 from {plain_http}/" in err
    assert "check --url" in err


@pytest.mark.parametrize("probe", PROBES)
def test_diag_route_and_controller_with_a_token_the_controller_refuses_say_check_the_token(
        probe: tuple[str, ...], controller: ControllerProc) -> None:
    err = one_line_error(operator_diag(probe[0], controller.url, "not-a-token", *probe[1:]))
    assert "the token is not accepted by this controller" in err and "HTTP 401" in err
    assert "check --token / TETHER_TOKEN" in err


@pytest.mark.parametrize("probe", PROBES)
def test_diag_route_and_controller_through_a_blackholed_route_say_traffic_is_swallowed(
        probe: tuple[str, ...], controller: ControllerProc, blackholed: str) -> None:
    err = one_line_error(operator_diag(probe[0], blackholed, controller.token, *probe[1:]))
    assert f"no answer from {blackholed} within 2 s" in err
    assert "a proxy or firewall swallows traffic" in err


@both_backends
def test_diag_route_to_a_node_whose_sidecar_is_frozen_names_the_hop_that_did_not_answer(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-frozen")
    # the sidecar's runtime-attached report can trail the session: without it the summary
    # rightly blames a runtime it does not know about
    api = controller.api()
    wait_until(lambda: (api.node("n-frozen").get("runtime") or {}).get("state") == "attached",
               what="the controller to know the runtime is attached")
    sidecar = node.sidecar_pid()
    assert sidecar is not None
    os.kill(sidecar, signal.SIGSTOP)  # the session stays open; nothing comes back over it
    try:
        out = operator_diag("route", controller.url, controller.token, "n-frozen", "--json",
                            "--count", "2", "--interval", "0")
        assert out.returncode == 1, out.stderr
        result = json.loads(out.stdout)
        summary = result["summary"]
        assert (summary["sent"], summary["answered"], summary["loss_percent"]) == (2, 0, 100.0)
        assert summary["lost_at"] == {"controller -> node": 2}
        assert summary["answered_by"].startswith("nobody: the pings stalled at controller -> "
                                                 "node")
        assert all(p["lost"] and p["state"] in ("queued", "expired") for p in result["pings"])
        table = operator_diag("route", controller.url, controller.token, "n-frozen",
                              "--count", "1")
        assert table.returncode == 1, table.stderr
        assert "lost at controller -> node" in table.stdout
    finally:
        os.kill(sidecar, signal.SIGCONT)

"""Issue 13's CLI polish, against real controllers and nodes: no Python reprs in what a
new user reads, HTTPS with --ca-file / --pin-sha256 (and contexts carrying them), exec on
an offline node saying so at once, and sim never touching a live fleet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..conftest import require_binary
from ..helpers import ControllerProc, NodeProc, tether_cmd, wait_until
from .test_transport_options import self_signed

REPRS = ("None", "{'", "[{")


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("TETHER_URL", "TETHER_TOKEN", "TETHER_CONTEXT")}
    return subprocess.run(tether_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})}, cwd=cwd)


def op_env(ctl: ControllerProc, tmp_path: Path) -> dict[str, str]:
    return {"TETHER_URL": ctl.url, "TETHER_TOKEN": ctl.token,
            "TETHER_CONFIG": str(tmp_path / "cli-config.json")}


def test_what_a_new_user_reads_has_no_python_reprs(
        controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    node = make_node("n1")
    env = op_env(controller, tmp_path)
    ran = cli("exec", "n1", "--", "echo", "hi", env=env)
    assert ran.returncode == 0 and ran.stdout == "hi\n", ran.stderr
    command_id = json.loads(cli("commands", "list", "--json", env=env).stdout
                            )["items"][0]["command_id"]
    screens = {
        "node status": cli("node", "status", "--state-dir", str(node.state_dir)),
        "nodes show": cli("nodes", "show", "n1", env=env),
        "commands show": cli("commands", "show", command_id, env=env),
        "commands list": cli("commands", "list", "--node", "n1", env=env),
    }
    for name, screen in screens.items():
        assert screen.returncode == 0, (name, screen.stderr)
        for bad in REPRS:
            assert bad not in screen.stdout, f"{name} shows {bad!r}:\n{screen.stdout}"
    assert "argv=[echo, hi]" in screens["commands show"].stdout
    assert command_id in screens["commands list"].stdout


@pytest.fixture
def tls_ctl(tmp_path: Path) -> Iterator[tuple[ControllerProc, Path, str]]:
    cert, key, pin = self_signed(tmp_path)
    ctl = ControllerProc(tmp_path / "ctl", tls=(cert, key))
    ctl.start()
    try:
        yield ctl, cert, pin
    finally:
        ctl.terminate()


def test_the_operator_cli_talks_https_with_a_ca_file_and_a_pin(
        tls_ctl: tuple[ControllerProc, Path, str], tmp_path: Path) -> None:
    ctl, cert, pin = tls_ctl
    env = op_env(ctl, tmp_path)
    untrusted = cli("nodes", "list", "--json", env=env)
    assert untrusted.returncode == 1
    assert json.loads(untrusted.stderr)["error"]["code"] == "tls_error"
    assert cli("nodes", "list", "--ca-file", str(cert), env=env).returncode == 0
    wrong = cli("nodes", "list", "--ca-file", str(cert), "--pin-sha256", "ab" * 32,
                "--json", env=env)
    assert wrong.returncode == 1 and "matches no configured pin" in wrong.stderr
    trusted = ("--ca-file", str(cert), "--pin-sha256", pin.upper())
    for command in (("nodes", "list"), ("commands", "list"), ("jobs", "list"),
                    ("diag", "controller")):
        done = cli(*command, *trusted, env=env)
        assert done.returncode == 0, (command, done.stderr)
    pinned_out = cli("diag", "controller", "--ca-file", str(cert), "--pin-sha256", "ab" * 32,
                     env=env)
    assert pinned_out.returncode == 1 and "pin" in pinned_out.stderr


def test_a_context_carries_url_token_ca_and_pin_and_exec_streams_over_wss(
        tls_ctl: tuple[ControllerProc, Path, str], tmp_path: Path) -> None:
    ctl, cert, pin = tls_ctl
    config = {"TETHER_CONFIG": str(tmp_path / "cli-config.json")}
    (tmp_path / "ops.token").write_text(ctl.token + "\n")
    assert cli("context", "set", "lab", "--url", ctl.url, "--token-file",
               str(tmp_path / "ops.token"), "--ca-file", str(cert), "--pin-sha256", pin,
               env=config).returncode == 0
    node = NodeProc(tmp_path / "n-tls", "n-tls")
    node.enroll(ctl, flags=["--ca-file", str(cert), "--pin-sha256", pin])
    node.start()
    try:
        wait_until(lambda: json.loads(cli("nodes", "show", "n-tls", "--json", env=config,
                                          cwd=tmp_path).stdout)["liveness"] == "online",
                   what="n-tls online over TLS")
        ran = cli("exec", "n-tls", "--", "echo", "over-tls", env=config, cwd=tmp_path)
        assert ran.returncode == 0 and ran.stdout == "over-tls\n", ran.stderr
        listed = cli("context", "list", env=config)
        assert "lab" in listed.stdout and ctl.token not in listed.stdout
    finally:
        node.cleanup()


def test_exec_to_an_offline_node_says_so_at_once_and_ctrl_c_detaches(
        controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    node = make_node("n-off")
    node.cleanup()  # goodbye: offline at once
    api = controller.api()
    wait_until(lambda: api.liveness("n-off") == "offline", what="n-off offline")
    base = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    proc = subprocess.Popen(tether_cmd("exec", "n-off", "--", "echo", "later"),
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**base, **op_env(controller, tmp_path)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until said: at once, not at the end
        assert line.startswith("n-off is offline; the command is queued and will run when "
                               "it reconnects; Ctrl-C detaches"), line
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "detached; the command goes on" in err
    queued = api.get("/api/v1/commands", params={"node_id": "n-off"}).json()["items"]
    assert [c["state"] for c in queued] == ["queued"]  # detaching left it queued


def test_sim_without_url_runs_its_own_controller_and_leaves_the_live_one_alone(
        controller: ControllerProc, tmp_path: Path) -> None:
    env = op_env(controller, tmp_path)  # TETHER_URL points at the live fleet
    before = controller.api().get("/api/v1/nodes").json()["items"]
    sim = cli("sim", "--nodes", "2", "--events", "1", "--duration", "0.2", "--json",
              env=env, timeout=120)
    assert sim.returncode == 0, sim.stderr
    report = json.loads(sim.stdout)
    assert report["controller"].startswith("its own") and report["sessions_held"] == 2
    assert controller.api().get("/api/v1/nodes").json()["items"] == before


def test_sim_cleanup_on_a_controller_without_node_delete_says_so(
        controller: ControllerProc, tmp_path: Path) -> None:
    env = op_env(controller, tmp_path)
    sim = cli("sim", "--url", controller.url, "--nodes", "1", "--events", "1",
              "--duration", "0.1", "--prefix", "simx", "--cleanup", env=env, timeout=120)
    nodes = [n["node_id"] for n in controller.api().get("/api/v1/nodes").json()["items"]]
    if "simx-0" in nodes:  # this controller has no DELETE /api/v1/nodes/{id}
        assert sim.returncode == 1
        assert "cannot delete nodes" in sim.stderr and "upgrade" in sim.stderr
    else:
        assert sim.returncode == 0, sim.stderr
        assert "nodes_deleted" in sim.stdout


def test_sim_cleanup_without_url_is_a_usage_error(tmp_path: Path) -> None:
    sim = cli("sim", "--cleanup", "--nodes", "1", cwd=tmp_path)
    assert sim.returncode == 2 and "--cleanup is for --url" in sim.stderr


def test_the_docs_self_signed_recipe_has_a_subject_alt_name_the_cli_accepts(
        tmp_path: Path) -> None:
    from cryptography import x509

    require_binary("openssl", "the docs' certificate recipe runs it")
    docs = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    recipe = docs.split("openssl req -x509", 1)[1].split("```", 1)[0]
    subprocess.run("openssl req -x509" + recipe.replace("\\\n", " "), shell=True,
                   cwd=tmp_path, check=True, capture_output=True, timeout=30)
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    ctl = ControllerProc(tmp_path / "ctl", tls=(tmp_path / "cert.pem", tmp_path / "key.pem"))
    ctl.start()
    try:
        listed = cli("nodes", "list", "--ca-file", str(tmp_path / "cert.pem"),
                     env=op_env(ctl, tmp_path))
        assert listed.returncode == 0, listed.stderr
    finally:
        ctl.terminate()

"""How the sidecar reaches the controller: TLS with a CA bundle and certificate pinning,
through a real HTTP CONNECT proxy (tinyproxy on loopback), and failing over between URLs."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..helpers import ControllerProc, NodeProc, Proc, wait_until


def self_signed(dir_: Path) -> tuple[Path, Path, str]:
    """A certificate for 127.0.0.1 (its own CA); returns cert, key and its SHA-256 pin."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = dir_ / "cert.pem", dir_ / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pin = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return cert_path, key_path, pin


@pytest.fixture
def tls_controller(tmp_path: Path) -> Iterator[tuple[ControllerProc, Path, str]]:
    cert, key, pin = self_signed(tmp_path)
    ctl = ControllerProc(tmp_path / "ctl", tls=(cert, key))
    ctl.start()
    yield ctl, cert, pin
    ctl.terminate()


def sidecar_status(node: NodeProc) -> dict[str, object]:
    return json.loads((node.state_dir / "sidecar.status.json").read_text())  # type: ignore[no-any-return]


def test_a_node_reaches_a_tls_controller_with_a_ca_file_and_a_matching_pin(
        tls_controller: tuple[ControllerProc, Path, str], tmp_path: Path) -> None:
    ctl, cert, pin = tls_controller
    node = NodeProc(tmp_path / "n-tls", "n-tls")
    node.enroll(ctl, flags=["--ca-file", str(cert), "--pin-sha256", pin])
    node.start()
    try:
        api = ctl.api()
        wait_until(lambda: api.liveness("n-tls") == "online", what="online over wss")
        assert str(sidecar_status(node)["transport"]["url"]).startswith("wss://")  # type: ignore[index]
        hi = api.submit("n-tls", "diag.ping")
        wait_until(lambda: api.command(hi["command_id"])["state"] == "succeeded",
                   what="ping over wss")
    finally:
        node.cleanup()


def test_a_certificate_that_matches_no_pin_is_refused_and_reported(
        tls_controller: tuple[ControllerProc, Path, str], tmp_path: Path) -> None:
    ctl, cert, pin = tls_controller
    node = NodeProc(tmp_path / "n-pin", "n-pin")
    # Enrollment itself refuses a wrong pin (tests/e2e/test_enroll_pinning.py): enroll
    # with the right one, then the controller's certificate "changes" under the node.
    node.enroll(ctl, flags=["--ca-file", str(cert), "--pin-sha256", pin])
    meta = json.loads((node.state_dir / "node.json").read_text())
    meta["transport"]["pins"] = ["ab" * 32]
    (node.state_dir / "node.json").write_text(json.dumps(meta))
    node.start()
    try:
        status = wait_until(lambda: (s := sidecar_status(node))["transport"][  # type: ignore[index]
            "last_close_reason"] and s, what="the pin check to fail")
        assert "matches no configured pin" in status["transport"]["last_close_reason"]  # type: ignore[index]
        assert ctl.api().liveness("n-pin") == "offline"  # it never got a session
        assert node.alive()  # backing off, not crashing
    finally:
        node.cleanup()


def test_an_untrusted_certificate_is_refused_without_a_ca_file(
        tls_controller: tuple[ControllerProc, Path, str], tmp_path: Path) -> None:
    ctl, cert, _ = tls_controller
    node = NodeProc(tmp_path / "n-ca", "n-ca")
    node.enroll(ctl, flags=["--ca-file", str(cert)])
    meta = json.loads((node.state_dir / "node.json").read_text())
    meta["transport"].pop("ca_file")  # as if the operator forgot the CA bundle
    (node.state_dir / "node.json").write_text(json.dumps(meta))
    node.start()
    try:
        status = wait_until(lambda: (s := sidecar_status(node))["transport"][  # type: ignore[index]
            "last_close_reason"] and s, what="the TLS handshake to fail")
        assert "CERTIFICATE_VERIFY_FAILED" in status["transport"]["last_close_reason"]  # type: ignore[index]
    finally:
        node.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    binary = shutil.which("tinyproxy")
    if binary is None:
        pytest.fail("tinyproxy is not installed: 'make test' installs it when run as root "
                    "(apt-get install tinyproxy)")
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\n"
                    f"LogFile \"{log}\"\nLogLevel Connect\nMaxClients 50\n")
    proc = Proc([binary, "-d", "-c", str(conf)], tmp_path / "tinyproxy.out")
    proc.start()
    wait_until(lambda: _listening(port), what="tinyproxy to listen")
    yield f"http://127.0.0.1:{port}", log
    proc.terminate()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_sidecar_dials_through_an_http_connect_proxy(
        controller: ControllerProc, tinyproxy: tuple[str, Path], tmp_path: Path) -> None:
    proxy_url, proxy_log = tinyproxy
    node = NodeProc(tmp_path / "n-proxy", "n-proxy")
    node.enroll(controller, flags=["--proxy", proxy_url])
    node.start()
    try:
        api = controller.api()
        wait_until(lambda: api.liveness("n-proxy") == "online", what="online via the proxy")
        log = proxy_log.read_text()
        assert f"CONNECT 127.0.0.1:{controller.port} HTTP/1.1" in log, log[-2000:]
        session = api.node("n-proxy")["session"]
        assert session["remote"].startswith("127.0.0.1:")
    finally:
        node.cleanup()


def test_the_sidecar_fails_over_to_the_next_controller_url(
        controller: ControllerProc, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    node = NodeProc(tmp_path / "n-fo", "n-fo", extra=["--controller-url", dead])
    node.enroll(controller, flags=["--fallback-url", controller.url])
    node.start()
    try:
        api = controller.api()
        wait_until(lambda: api.liveness("n-fo") == "online", timeout_s=30,
                   what="online through the fallback URL")
        status = sidecar_status(node)
        assert status["transport"]["url"].endswith(f":{controller.port}/v1/edge/connect")  # type: ignore[index]
        assert status["transport"]["reconnects"] >= 1  # type: ignore[index]
    finally:
        node.cleanup()


def test_proxy_url_must_be_valid(controller: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-badproxy", "n-badproxy")
    with pytest.raises(subprocess.CalledProcessError):
        node.enroll(controller, flags=["--proxy", "ftp://nope"])

"""Issue 11 item 8: enrollment checks the CA and the pin before the join token leaves the
machine, and refuses a pin or CA bundle over plain http."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.common.tlspin import PinMismatch, pinned_context

from ..helpers import ControllerProc, tether_cmd
from .test_transport_options import self_signed


@pytest.fixture
def tls_ctl(tmp_path: Path) -> Iterator[tuple[ControllerProc, Path, str]]:
    cert, key, pin = self_signed(tmp_path)
    ctl = ControllerProc(tmp_path / "ctl", tls=(cert, key))
    ctl.start()
    try:
        yield ctl, cert, pin
    finally:
        ctl.terminate()


def enroll(ctl: ControllerProc, token: str, state: Path, *flags: str,
           url: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tether_cmd(
        "node", "enroll", "--controller", url or ctl.url, "--token", token, "--node-id",
        "n-pin", "--state-dir", str(state), *flags), capture_output=True, text=True,
        timeout=30)


def one_use_token(ctl: ControllerProc) -> str:
    return str(ctl.api().post("/api/v1/join-tokens", json={"uses": 1}).json()["token"])


def test_a_wrong_pin_fails_enrollment_before_the_token_is_sent(
        tls_ctl: tuple[ControllerProc, Path, str], tmp_path: Path) -> None:
    ctl, cert, pin = tls_ctl
    token = one_use_token(ctl)
    state = tmp_path / "node"
    wrong = enroll(ctl, token, state, "--ca-file", str(cert), "--pin-sha256", "ab" * 32)
    assert wrong.returncode == 1, wrong.stdout
    assert "enrolled" not in wrong.stdout
    assert wrong.stderr.count("\n") == 1
    assert "matches no configured pin" in wrong.stderr
    assert "the join token was not sent" in wrong.stderr
    assert not (state / "node.json").exists()
    assert ctl.api().get("/api/v1/nodes/n-pin").status_code == 404
    # The one-use token is still unused: the controller never received it.
    right = enroll(ctl, token, state, "--ca-file", str(cert), "--pin-sha256", pin.upper())
    assert right.returncode == 0, right.stderr
    assert right.stdout.startswith("enrolled n-pin")
    assert ctl.api().get("/api/v1/nodes/n-pin").status_code == 200


def test_an_untrusted_certificate_fails_enrollment_before_the_token_is_sent(
        tls_ctl: tuple[ControllerProc, Path, str], tmp_path: Path) -> None:
    ctl, cert, pin = tls_ctl
    token = one_use_token(ctl)
    untrusted = enroll(ctl, token, tmp_path / "node", "--pin-sha256", pin)  # no CA file
    assert untrusted.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert enroll(ctl, token, tmp_path / "node", "--ca-file", str(cert)).returncode == 0


@pytest.mark.parametrize("flag", ["--pin-sha256", "--ca-file"])
def test_a_pin_or_ca_file_over_plain_http_is_a_usage_error(
        controller: ControllerProc, tmp_path: Path, flag: str) -> None:
    token = one_use_token(controller)
    value = "ab" * 32 if flag == "--pin-sha256" else str(tmp_path / "ca.pem")
    refused = enroll(controller, token, tmp_path / "node", flag, value)
    assert refused.returncode == 2
    assert refused.stderr == (f"error: {flag} needs an https:// controller URL, not "
                              f"{controller.url}: use https://, or drop the pin and CA "
                              "file\n")
    assert not (tmp_path / "node").exists()
    assert enroll(controller, token, tmp_path / "node").returncode == 0  # token unused


async def test_the_pinned_context_fails_an_asyncio_handshake_too(
        tls_ctl: tuple[ControllerProc, Path, str]) -> None:
    ctl, cert, pin = tls_ctl
    wrong = pinned_context(ca_file=str(cert), pins=["cd" * 32])
    with pytest.raises(PinMismatch, match="matches no configured pin"):
        async with asyncio.timeout(10):
            await asyncio.open_connection("127.0.0.1", ctl.port, ssl=wrong)
    right = pinned_context(ca_file=str(cert), pins=[pin])
    async with asyncio.timeout(10):
        _, writer = await asyncio.open_connection("127.0.0.1", ctl.port, ssl=right)
    writer.close()
    await writer.wait_closed()

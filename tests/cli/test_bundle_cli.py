"""`tether bundle keygen|build|sign|verify` and `tether node trust` (cli/bundle.py): key
files and their modes, deterministic builds, and verify's exit status and one-line reason
for each way a bundle can be wrong."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.cli import main as cli_main
from tether.cli.bundle import build, load_private_key
from tether.protocol.bundle import TRUSTED_PUBLISHERS_FILE, parse_trusted_publishers, read_bundle


def tether(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "tether-app.toml").write_text('argv = ["bin/run"]\nrestart = "on-failure"\n'
                                          '[health]\nargv = ["bin/run", "--check"]\n')
    return root


@pytest.fixture
def key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "k1"
    assert tether(["bundle", "keygen", "--out", str(path)], capsys)[0] == 0
    return path


def built(tmp_path: Path, app: Path, key: Path, capsys: pytest.CaptureFixture[str],
          name: str = "b.bundle", *extra: str) -> Path:
    out = tmp_path / name
    code, text, err = tether(["bundle", "build", str(app), "--name", "hello", "--version", "1",
                              "--key", str(key), "--out", str(out), *extra], capsys)
    assert code == 0, err
    assert "hello v1" in text
    return out


def verify(path: Path, capsys: pytest.CaptureFixture[str], *pubs: Path,
           extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    argv = ["bundle", "verify", str(path), *extra]
    for pub in pubs:
        argv += ["--pubkey", str(pub)]
    return tether(argv, capsys)


def pub(key: Path) -> Path:
    return Path(f"{key}.pub")


# --- keys -----------------------------------------------------------------------------------


def test_keygen_writes_a_0600_private_key_and_a_public_key_beside_it(key: Path) -> None:
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub(key).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(pub(key).stat().st_mode) == 0o644


def test_keygen_refuses_to_overwrite_a_key_or_its_public_half(
        key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = key.read_bytes()
    code, _, err = tether(["bundle", "keygen", "--out", str(key)], capsys)
    assert code == 1 and "never overwrites" in err and key.read_bytes() == before
    lone = tmp_path / "k9"
    Path(f"{lone}.pub").write_text("x")
    assert tether(["bundle", "keygen", "--out", str(lone)], capsys)[0] == 1
    assert not lone.exists()


def test_keygen_makes_a_0600_key_whatever_the_umask(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0)
    try:
        assert tether(["bundle", "keygen", "--out", str(tmp_path / "k")], capsys)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


# --- build and verify -----------------------------------------------------------------------


def test_a_built_bundle_verifies_with_its_public_key(
        tmp_path: Path, app: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = built(tmp_path, app, key, capsys)
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["manifest.json", "signatures.json", "app.tar.gz"]
    code, text, _ = verify(out, capsys, pub(key))
    assert code == 0 and text.startswith("ok: hello v1 (app), 2 files")
    code, text, _ = verify(out, capsys, pub(key), extra=("--json",))
    obj = json.loads(text)
    assert code == 0 and obj["ok"] is True and obj["name"] == "hello" and obj["files"] == 2
    manifest = read_bundle(out.read_bytes()).manifest
    assert manifest.files["bin/run"].mode == 0o755
    assert manifest.files["tether-app.toml"].mode == 0o644
    assert manifest.policy.executables == ("bin/run",)


def test_a_build_is_deterministic(tmp_path: Path, app: Path, key: Path) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    private = load_private_key(key)
    for out in ("a.bundle", "b.bundle"):
        build(app, name="hello", version=2, key=private, out=tmp_path / out, now=now)
    assert (tmp_path / "a.bundle").read_bytes() == (tmp_path / "b.bundle").read_bytes()


def test_one_byte_of_app_tar_gz_changed_fails_verify_with_sha256_mismatch(
        tmp_path: Path, app: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = built(tmp_path, app, key, capsys)
    raw = bytearray(out.read_bytes())
    raw[read_bundle(bytes(raw)).payload_offset + 30] ^= 0x40
    out.write_bytes(raw)
    code, text, err = verify(out, capsys, pub(key))
    assert code == 1 and text == ""
    assert err.startswith("error: sha256_mismatch: ") and err.count("\n") == 1


def test_one_byte_of_the_manifest_changed_fails_verify_with_bad_signature(
        tmp_path: Path, app: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = built(tmp_path, app, key, capsys)
    raw = out.read_bytes()
    assert raw.count(b'"name":"hello"') == 1
    out.write_bytes(raw.replace(b'"name":"hello"', b'"name":"hellp"'))
    code, _, err = verify(out, capsys, pub(key), extra=("--json",))
    assert code == 1
    assert json.loads(err)["error"]["code"] == "bad_signature"


def test_a_bundle_signed_by_another_key_fails_verify_with_untrusted_key(
        tmp_path: Path, app: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = built(tmp_path, app, key, capsys)
    other = tmp_path / "other"
    tether(["bundle", "keygen", "--out", str(other)], capsys)
    code, _, err = verify(out, capsys, pub(other))
    assert code == 1 and err.startswith("error: untrusted_key: ")


def test_two_of_three_signatures_hold_when_the_third_is_bad(
        tmp_path: Path, app: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = built(tmp_path, app, key, capsys)
    k2, k3 = tmp_path / "k2", tmp_path / "k3"
    for k in (k2, k3):
        tether(["bundle", "keygen", "--out", str(k)], capsys)
    assert tether(["bundle", "sign", str(out), "--key", str(k2)], capsys)[0] == 0
    assert tether(["bundle", "sign", str(out), "--key", str(k3)], capsys)[0] == 0
    # k3's signature made bad: its entry now carries k2's signature bytes
    raw = out.read_bytes()
    sigs = [base64.b64encode(s.sig) for s in read_bundle(raw).signatures]
    assert len(sigs) == 3
    raw = raw.replace(sigs[2], sigs[1])
    out.write_bytes(raw)
    pubs = (pub(key), pub(k2), pub(k3))
    assert verify(out, capsys, *pubs, extra=("--threshold", "2"))[0] == 0
    code, _, err = verify(out, capsys, *pubs, extra=("--threshold", "3"))
    assert code == 1 and err.startswith("error: bad_signature: ")


def test_signing_again_with_the_same_key_replaces_its_signature(
        tmp_path: Path, app: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = built(tmp_path, app, key, capsys)
    code, text, _ = tether(["bundle", "sign", str(out), "--key", str(key)], capsys)
    assert code == 0 and "1 signatures" in text
    assert len(read_bundle(out.read_bytes()).signatures) == 1


def test_an_expired_bundle_fails_verify(tmp_path: Path, app: Path, key: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "old.bundle"
    build(app, name="hello", version=1, key=load_private_key(key), out=out,
          expires_in_days=1, now=datetime.now(UTC) - timedelta(days=2))
    code, _, err = verify(out, capsys, pub(key))
    assert code == 1 and err.startswith("error: bundle_expired: ")


def test_a_file_that_is_not_a_bundle_fails_verify_with_bad_layout(
        tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk" * 300)
    code, _, err = verify(junk, capsys, pub(key))
    assert code == 1 and err.startswith("error: bad_layout: ")
    code, _, err = verify(tmp_path / "absent", capsys, pub(key))
    assert code == 1 and "cannot read the bundle" in err


def test_verify_exits_non_zero_from_the_installed_command_too(
        tmp_path: Path, app: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = built(tmp_path, app, key, capsys)
    raw = bytearray(out.read_bytes())
    raw[read_bundle(bytes(raw)).payload_offset + 30] ^= 0x40
    out.write_bytes(raw)
    run = subprocess.run([sys.executable, "-m", "tether.cli.main", "bundle", "verify",
                          str(out), "--pubkey", str(pub(key))], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "sha256_mismatch" in run.stderr


# --- what build refuses ---------------------------------------------------------------------


def test_build_refuses_a_symlink_in_the_app(tmp_path: Path, app: Path, key: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (app / "passwd").symlink_to("/etc/passwd")
    code, _, err = tether(["bundle", "build", str(app), "--name", "hello", "--version", "1",
                           "--key", str(key), "--out", str(tmp_path / "b")], capsys)
    assert code == 1 and "not a regular file" in err and not (tmp_path / "b").exists()


@pytest.mark.parametrize(("toml", "expected"), [
    (None, "tether-app.toml is missing"),
    ('argv = ["bin/run"]\nrestart = "sometimes"\n', "bad_app"),
    ('argv = ["bin/absent"]\n', "not in the bundle"),
])
def test_build_checks_tether_app_toml(tmp_path: Path, app: Path, key: Path, toml: str | None,
                                      expected: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    if toml is None:
        (app / "tether-app.toml").unlink()
    else:
        (app / "tether-app.toml").write_text(toml)
    code, _, err = tether(["bundle", "build", str(app), "--name", "hello", "--version", "1",
                           "--key", str(key), "--out", str(tmp_path / "b")], capsys)
    assert code == 1 and expected in err


@pytest.mark.parametrize("argv", [["--name", "Hello", "--version", "1"],
                                  ["--name", "hello", "--version", "0"],
                                  ["--name", "hello", "--version", "1",
                                   "--min-runner-version", "1.0"]])
def test_build_refuses_a_manifest_a_node_would_refuse(
        tmp_path: Path, app: Path, key: Path, argv: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli_main.main(["bundle", "build", str(app), "--key", str(key), "--out",
                              str(tmp_path / "b"), *argv])
    except SystemExit as exc:  # argparse: --version 0
        code = int(exc.code or 0)
    assert code in (1, 2) and not (tmp_path / "b").exists()


def test_a_private_key_that_is_not_one_is_refused(tmp_path: Path, app: Path, key: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = tether(["bundle", "build", str(app), "--name", "hello", "--version", "1",
                           "--key", str(pub(key)), "--out", str(tmp_path / "b")], capsys)
    assert code == 1 and "not an unencrypted PEM private key" in err


# --- node trust -----------------------------------------------------------------------------


def test_node_trust_adds_a_key_once_and_sets_the_threshold(
        tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "node"
    assert tether(["node", "trust", str(pub(key)), "--state-dir", str(state)], capsys)[0] == 0
    code, text, _ = tether(["node", "trust", str(pub(key)), "--state-dir", str(state)], capsys)
    assert code == 0 and text.startswith("already trusted")
    trusted = parse_trusted_publishers((state / TRUSTED_PUBLISHERS_FILE).read_bytes())
    assert len(trusted.keys) == 1 and trusted.threshold == 1
    k2 = tmp_path / "k2"
    tether(["bundle", "keygen", "--out", str(k2)], capsys)
    code, text, _ = tether(["node", "trust", str(pub(k2)), "--state-dir", str(state),
                            "--threshold", "2", "--json"], capsys)
    assert code == 0 and json.loads(text) == {
        "key_id": json.loads(text)["key_id"], "added": True, "keys": 2, "threshold": 2,
        "file": str(state / TRUSTED_PUBLISHERS_FILE)}
    trusted = parse_trusted_publishers((state / TRUSTED_PUBLISHERS_FILE).read_bytes())
    assert len(trusted.keys) == 2 and trusted.threshold == 2


def test_node_trust_refuses_a_key_that_does_not_parse_and_a_threshold_above_the_keys(
        tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "node"
    code, _, err = tether(["node", "trust", str(key), "--state-dir", str(state)], capsys)
    assert code == 1 and "not a PEM public key" in err
    assert not (state / TRUSTED_PUBLISHERS_FILE).exists()
    code, _, err = tether(["node", "trust", str(pub(key)), "--state-dir", str(state),
                           "--threshold", "2"], capsys)
    assert code == 2 and "--threshold" in err
    assert not (state / TRUSTED_PUBLISHERS_FILE).exists()


def test_node_trust_refuses_to_rewrite_a_trust_file_it_cannot_read(
        tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "node"
    state.mkdir()
    (state / TRUSTED_PUBLISHERS_FILE).write_text("{}")
    code, _, err = tether(["node", "trust", str(pub(key)), "--state-dir", str(state)], capsys)
    assert code == 1 and "fix or remove it" in err
    assert (state / TRUSTED_PUBLISHERS_FILE).read_text() == "{}"

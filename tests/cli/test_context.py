"""CLI contexts (cli/context.py): named controllers in a 0600 file, chosen by ``context
use``; flags and the environment win over the context; tokens are never printed, and a
context's token never goes to another controller's URL."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tether.cli.main import build_parser, main
from tether.cli.operator import api_from

SECRET = "tok-SECRET-123"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cfg" / "config.json"
    monkeypatch.setenv("TETHER_CONFIG", str(path))
    for name in ("TETHER_URL", "TETHER_TOKEN", "TETHER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no local controller data dir here
    return path


def test_set_writes_the_file_0600_and_the_first_context_becomes_current(
        config: Path) -> None:
    assert main(["context", "set", "lab", "--url", "https://lab:8700/", "--token", SECRET,
                 "--pin-sha256", "AB:CD"]) == 0
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    data = json.loads(config.read_text())
    assert data["current"] == "lab"
    assert data["contexts"]["lab"] == {"url": "https://lab:8700", "token": SECRET,
                                       "pins": ["abcd"]}


def test_list_never_prints_a_token(config: Path, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    (tmp_path / "prod.token").write_text(SECRET + "-prod\n")
    main(["context", "set", "lab", "--url", "http://lab:8700", "--token", SECRET])
    main(["context", "set", "prod", "--url", "https://prod:8700",
          "--token-file", str(tmp_path / "prod.token")])
    capsys.readouterr()
    assert main(["context", "list"]) == 0
    assert main(["context", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "* lab" in out and "prod" in out and "prod.token" in out


def test_use_switches_and_delete_removes(config: Path) -> None:
    main(["context", "set", "a", "--url", "http://a:1", "--token", "ta"])
    main(["context", "set", "b", "--url", "http://b:1", "--token", "tb"])
    assert main(["context", "use", "b"]) == 0
    assert json.loads(config.read_text())["current"] == "b"
    assert main(["context", "use", "nope"]) == 2
    assert main(["context", "delete", "b"]) == 0
    data = json.loads(config.read_text())
    assert data["current"] is None and list(data["contexts"]) == ["a"]


def ns(*argv: str) -> object:
    return build_parser().parse_args(["nodes", "list", *argv])


def test_the_current_context_supplies_url_token_ca_file_and_pins(
        config: Path, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    main(["context", "set", "lab", "--url", "https://lab:8700", "--token", SECRET,
          "--ca-file", str(tmp_path / "ca.pem"), "--pin-sha256", "ab" * 32])
    api = api_from(ns())  # type: ignore[arg-type]
    assert (api.url, api.token, api.pins) == ("https://lab:8700", SECRET, ("ab" * 32,))
    assert api.ca_file == str(tmp_path / "ca.pem")


def test_flags_then_environment_win_over_the_context(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main(["context", "set", "lab", "--url", "https://lab:8700", "--token", SECRET])
    monkeypatch.setenv("TETHER_TOKEN", "from-env")
    assert api_from(ns()).token == "from-env"  # type: ignore[arg-type]
    assert api_from(ns("--token", "from-flag")).token == "from-flag"  # type: ignore[arg-type]
    monkeypatch.setenv("TETHER_URL", "https://lab:8700")
    assert api_from(ns()).url == "https://lab:8700"  # type: ignore[arg-type]


def test_a_contexts_token_never_goes_to_another_url(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["context", "set", "lab", "--url", "https://lab:8700", "--token", SECRET])
    capsys.readouterr()
    assert main(["nodes", "list", "--url", "http://elsewhere:1", "--json"]) == 2
    err = json.loads(capsys.readouterr().err)
    assert err["error"]["code"] == "unauthorized"


def test_a_pin_over_plain_http_is_a_usage_error(config: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nodes", "list", "--url", "http://c:1", "--token", "t",
                 "--pin-sha256", "ab" * 32]) == 2
    assert "needs an https:// controller URL" in capsys.readouterr().err


def test_a_broken_config_file_is_named_not_ignored(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config.parent.mkdir(parents=True)
    config.write_text("{not json")
    assert main(["nodes", "list", "--json"]) == 2
    err = json.loads(capsys.readouterr().err)["error"]
    assert str(config) in err["message"]

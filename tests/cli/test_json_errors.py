"""``--json`` applies to errors too: every command that takes ``--json`` fails with exactly
``{"error": {"code", "message"}}`` on stderr (the REST API's shape) and a non-zero exit,
whether the controller is unreachable, refuses, or the command line is wrong."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tether.cli.main import build_parser, main

from .test_help import walk

DEAD_URL = "http://127.0.0.1:9"  # nothing listens on discard: refused at once
SLOW = {"tether bench"}  # runs the benchmark suite before it can fail


def json_commands() -> list[tuple[str, list[str]]]:
    """(path, argv) for every command with a ``--json`` flag, positionals filled in."""
    found = []
    for path, parser in walk(build_parser()):
        flags = {a.dest: a for a in parser._actions}
        if path in SLOW or "json" not in flags or "--json" not in flags["json"].option_strings:
            continue
        argv = path.split()[1:]
        argv += ["x" for a in parser._actions if not a.option_strings
                 and not isinstance(a, argparse._SubParsersAction) and a.nargs is None]
        if "url" in flags and path != "tether context set":  # set without --url: refused
            argv += ["--url", DEAD_URL, "--token", "t"]
        found.append((path, [*argv, "--json"]))
    return found


@pytest.mark.parametrize("path, argv", json_commands(), ids=[p for p, _ in json_commands()])
def test_every_json_command_fails_with_a_json_error_object_on_stderr(
        path: str, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # no node state dir, no controller data dir here
    monkeypatch.setenv("TETHER_CONFIG", str(tmp_path / "config.json"))
    for name in ("TETHER_URL", "TETHER_TOKEN", "TETHER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    if path == "tether context list":  # succeeds on an empty config: break the file
        (tmp_path / "config.json").write_text("[")
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code != 0, f"{path} succeeded"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, f"{path} said nothing on stderr"
    for line in lines:
        body = json.loads(line)
        assert set(body) == {"error"}, line
        assert set(body["error"]) == {"code", "message"}, line
        assert body["error"]["code"] and body["error"]["message"], line


def test_a_usage_error_with_json_is_a_json_error_with_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["commands", "list", "--state", "bogus", "--json"])
    assert exc.value.code == 2
    err = json.loads(capsys.readouterr().err)["error"]
    assert err["code"] == "usage_error" and "bogus" in err["message"]


def test_without_json_an_error_is_one_plain_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nodes", "list", "--url", DEAD_URL, "--token", "t"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the controller") and err.count("\n") == 1

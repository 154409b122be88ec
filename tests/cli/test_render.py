"""Human output never shows a Python repr: no ``None``, no ``{'``, no ``[{``, whatever JSON
a node or a controller sent (cli/render.py's Rule)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from tether.cli import operator
from tether.cli.render import human

REPRS = ("None", "{'", "[{", "True", "False", "[]", "{}")

# Views as the controller serves them, with every optional part missing or nested.
NODE: dict[str, Any] = {
    "node_id": "n1", "liveness": "offline", "enabled": True,
    "runtime": {"state": "attached", "version": "0.1.0"}, "session": None,
    "last_seen_at": None, "capabilities": ["exec", "diag.ping"], "labels": {"env": "lab"},
    "resources": {"cpu_percent": 1.5, "cpus": 2, "load": [0.1, 0.2, 0.3],
                  "memory": {"percent": 7.5}, "disk": {"percent": 30, "free": 2**30},
                  "processes": 100},
    "apps": {"web": {"state": "running", "restarts": 0}},
}
COMMAND: dict[str, Any] = {
    "command_id": "c_1", "node_id": "n1", "kind": "exec",
    "args": {"argv": ["echo", "hi"], "env": {"A": "1"}, "opts": [{"x": 1}]},
    "state": "succeeded", "exit_code": None, "error": None, "result": {"stdout_bytes": 3},
    "timeline": [{"state": "queued", "at": "t", "detail": None},
                 {"state": "failed", "at": "t", "detail": {"why": "x"}}],
}


def assert_no_repr(text: str) -> None:
    for bad in REPRS:
        assert bad not in text, f"{bad!r} in:\n{text}"


@pytest.mark.parametrize("value, text", [
    (None, "-"), (True, "yes"), (False, "no"), ({}, "-"), ([], "-"),
    ({"env": "lab", "n": 1}, "env=lab, n=1"),
    ({"a": {"b": None, "c": [1, 2]}}, "a.b=-, a.c=[1, 2]"),
    ([{"x": 1}, {"y": True}], "(x=1), (y=yes)"),
    ("\x1b[2J", "\\x1b[2J"),
])
def test_human_gives_one_readable_line_for_any_json(value: Any, text: str) -> None:
    assert human(value) == text


class FakeApi:
    def get(self, path: str, **_: Any) -> Any:
        if path.startswith("/api/v1/nodes/"):
            return NODE
        if path == "/api/v1/commands":
            return {"items": [COMMAND], "counts": {"succeeded": 1}}
        return COMMAND


def args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(json=False, url=None, token=None, **kw)


@pytest.mark.parametrize("show", [
    lambda: operator.nodes_show(args(node_id="n1")),
    lambda: operator.commands_show(args(command_id="c_1")),
], ids=["nodes show", "commands show"])
def test_node_and_command_views_show_no_python_reprs(
        show: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(operator, "api_from", lambda args: FakeApi())
    assert show() == 0
    assert_no_repr(capsys.readouterr().out)


def test_commands_list_shows_argv_as_a_command_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli import commands

    monkeypatch.setattr(commands, "api_from", lambda args: FakeApi())
    assert commands.commands_list(args(node=None, state=None, limit=5)) == 0
    out = capsys.readouterr().out
    assert "echo hi" in out and "by state: succeeded=1" in out
    assert_no_repr(out)


def test_node_status_of_a_node_never_connected_shows_no_none(
        capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli.main import _print_node_status

    _print_node_status({"node_id": "n1", "controller": "http://c", "enrolled": True,
                        "runtime": {"running": False, "pid": None},
                        "sidecar_process": None,
                        "transport": {"state": "connecting", "session_id": None,
                                      "reconnects": 0, "rtt_ms": None,
                                      "clock_offset_ms": None, "last_close_code": None,
                                      "last_close_reason": None, "backoff_s": 0.5},
                        "outbox": {"depth": 0, "oldest_age_s": None}, "commands": {}})
    out = capsys.readouterr().out
    assert_no_repr(out)
    assert "last close  none" in out and "commands    none" in out


def test_the_sim_report_shows_nested_parts_as_key_value(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import contextlib

    from tether.cli import sim

    async def fake_simulate(url: str, token: str, **kw: Any) -> dict[str, Any]:
        return {"nodes": 2, "heartbeat_rtt_p99_ms": None,
                "zero_loss": {"ok": True, "sample_mismatches": {}, "unacked": 0}}

    monkeypatch.setattr("tether.tools.fleet.simulate", fake_simulate)
    monkeypatch.setattr(sim, "own_controller",
                        contextlib.contextmanager(lambda: iter([("http://x", "t")])))
    code = sim.run_sim(argparse.Namespace(url=None, cleanup=False, json=False, nodes=2,
                                          events=1, duration=0.1, storm=False, prefix="s"),
                       api_from=None)
    out = capsys.readouterr().out
    assert code == 0
    assert "zero_loss" in out and "ok=yes" in out
    assert_no_repr(out)

"""What a node sends reaches the operator's terminal through ``tether nodes`` and
``tether commands``: its labels, versions, apps table, command errors. A node is a peer, so
that text is hostile until shown otherwise. Found replaying issue 11's attacks: a node whose
apps table held ``{"web": 5}`` made ``tether nodes show`` die with a TypeError traceback,
and labels holding ``\\x1b[2J`` or ``\\x1b]0;...\\x07`` were written raw, so a node could clear
or retitle the operator's terminal. Rendering is total over any JSON, and control and
format characters are shown escaped."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from tether.cli import operator

ESC = "\x1b"
HOSTILE_NODE: dict[str, Any] = {
    "node_id": "evil", "liveness": "online", "enabled": True,
    "runtime": {"state": "attached", "version": ESC + "[31mred"},
    "session": {"session_id": "s_1", "opened_at": "t", "remote": "r", "resumed": False},
    "last_seen_at": "t", "capabilities": [ESC + "]0;pwn\x07", 5],
    "labels": {ESC + "[2Jx": ESC + "]0;pwn\x07", "bidi": "\u202eexe.txt"},
    "resources": {"cpu_percent": ESC + "[1A", "memory": 5, "disk": {"free": "lots"}},
    "apps": {"web": 5, "db": [1], "x": {"state": 7, "restarts": "many"}, "": None,
             ESC + "[2J": {"state": "running", "restarts": 0}},
    "health": {"ready": False, "reasons": [ESC + "[2J", 5, {"x": ESC}]},
    "bundles": {ESC + "[2J": {"active": ESC + "]0;pwn\x07", "state": 5}, "web": 5},
}
HOSTILE_COMMAND: dict[str, Any] = {
    "command_id": "c_1", "node_id": "evil", "kind": "exec", "args": {"argv": [ESC + "c"]},
    "state": "failed", "exit_code": 1, "error": ESC + "[2J" + ESC + "]0;pwn\x07",
    "timeline": [{"state": "failed", "at": "t", "detail": ESC + "[31m"}, {"at": 5}],
}


class FakeApi:
    def get(self, path: str, **_: Any) -> Any:
        if path == "/api/v1/nodes":
            return {"items": [HOSTILE_NODE]}
        if path.startswith("/api/v1/nodes/"):
            return HOSTILE_NODE
        return HOSTILE_COMMAND


@pytest.fixture(autouse=True)
def fake_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operator, "api_from", lambda args: FakeApi())


def args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(json=False, url=None, token=None, **kw)


@pytest.mark.parametrize("show", [
    lambda: operator.nodes_list(args()),
    lambda: operator.nodes_show(args(node_id="evil")),
    lambda: operator.commands_show(args(command_id="c_1")),
], ids=["nodes list", "nodes show", "commands show"])
def test_a_hostile_node_cannot_crash_or_drive_the_operators_terminal(
        show: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert show() == 0
    out = capsys.readouterr().out
    assert ESC not in out and "\x07" not in out and "\u202e" not in out, out
    assert "\\x1b" in out, out  # shown, escaped, not hidden


def test_terminal_safe_escapes_controls_and_keeps_ordinary_text() -> None:
    assert operator.terminal_safe("lab-01 ünïcode ok") == "lab-01 ünïcode ok"
    assert operator.terminal_safe(ESC + "[2J\n\t\u202e\u200b") == \
        "\\x1b[2J\\n\\t\\u202e\\u200b"


def test_node_status_shows_a_controllers_close_reason_escaped(
        capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli.main import _print_node_status

    _print_node_status({"node_id": "n1", "controller": "http://c", "enrolled": True,
                        "runtime": {"running": False, "pid": None},
                        "transport": {"last_close_code": 4400,
                                      "last_close_reason": "bad\x1b[2J\x1b]0;pwn\x07"}})
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J" in out

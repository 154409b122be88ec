"""Policy rule 6 (node/policy.py): what a ``file.send`` may read, and the node's check of
its args at apply time (node/filesend.py ``check_file_send``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether.node.filesend import check_file_send
from tether.node.policy import Policy, PolicyError, Refused


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "ok.bin").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"s")
    return ws


def args(src: str, **more: str) -> dict[str, str]:
    return {"peer_session_id": "link-1", "to_node": "b", "src": src, **more}


def test_a_file_in_the_workspace_may_be_sent(workspace: Path) -> None:
    assert Policy().file_source("ok.bin", workspace) == (workspace / "ok.bin").resolve()
    assert check_file_send(Policy(), workspace, "file.send", args("ok.bin")) is None


@pytest.mark.parametrize("src", ["../secret", "/etc/passwd", "link", "sub/../../secret",
                                 "", "a\x00b"])
def test_a_source_outside_the_workspace_is_refused(workspace: Path, src: str) -> None:
    os.symlink(workspace.parent / "secret", workspace / "link")
    with pytest.raises(Refused):
        Policy().file_source(src, workspace)
    assert check_file_send(Policy(), workspace, "file.send", args(src)) is not None


def test_file_read_allow_lifts_the_rule_for_its_directories(workspace: Path) -> None:
    policy = Policy.from_dict({"file_read_allow": [str(workspace.parent)]})
    assert policy.file_source("../secret", workspace).name == "secret"
    with pytest.raises(Refused):
        policy.file_source("/etc/passwd", workspace)
    with pytest.raises(PolicyError):
        Policy.from_dict({"file_read_allow": ["relative/dir"]})


def test_file_send_is_deniable_like_any_kind(workspace: Path) -> None:
    policy = Policy.from_dict({"deny_kinds": ["file.send"]})
    assert policy.check("file.send", args("ok.bin")) == "kind 'file.send' is in deny_kinds"


@pytest.mark.parametrize("bad", [
    {"peer_session_id": "bad id!", "to_node": "b", "src": "ok.bin"},
    {"peer_session_id": "p", "to_node": "B!", "src": "ok.bin"},
    {"peer_session_id": "p", "to_node": "b", "src": "ok.bin", "dst": "../x"},
    {"peer_session_id": "p", "to_node": "b", "src": "ok.bin", "dst": ".hidden"},
    {"peer_session_id": "p", "to_node": "b", "src": "ok.bin", "extra": 1},
    {"peer_session_id": "p", "to_node": "b"},
])
def test_bad_file_send_args_are_rejected_at_apply(workspace: Path,
                                                 bad: dict[str, object]) -> None:
    assert check_file_send(Policy(), workspace, "file.send", bad) is not None


def test_other_kinds_are_not_judged_by_the_file_rule(workspace: Path) -> None:
    assert check_file_send(Policy(), workspace, "exec", {"src": "/etc/passwd"}) is None

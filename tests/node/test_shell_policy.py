"""The node's policy and the ``shell`` kind: allowed by default as ``exec`` is, deniable on
its own, and what it runs is judged as an exec's (node/policy.py)."""

from __future__ import annotations

import pytest

from tether.node.policy import Policy, shell_exec_args


def test_a_shell_is_allowed_by_default() -> None:
    assert Policy().check("shell", {"rows": 24, "cols": 80}) is None


def test_deny_kinds_refuses_a_shell_and_leaves_exec_alone() -> None:
    policy = Policy.from_dict({"deny_kinds": ["shell"]})
    assert policy.check("shell", {}) == "kind 'shell' is in deny_kinds"
    assert policy.check("exec", {"argv": ["true"]}) is None


def test_an_allow_list_without_shell_refuses_it() -> None:
    policy = Policy.from_dict({"allow_kinds": ["exec"]})
    assert policy.check("shell", {}) == "kind 'shell' is not in allow_kinds"


def test_under_exec_allow_the_shell_program_must_be_allowed_too() -> None:
    policy = Policy.from_dict({"exec_allow": ["sh"]})
    assert policy.check("shell", {"argv": ["sh"]}) is None
    assert policy.check("shell", {"argv": ["python3"]}) == \
        "executable 'python3' is not in exec_allow"


def test_the_default_program_is_the_login_shell_with_term_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/bin/bash")
    args = shell_exec_args({"rows": 24, "cols": 80, "env": {"LANG": "C"}})
    assert args == {"argv": ["/bin/bash"], "env": {"TERM": "xterm-256color", "LANG": "C"}}
    monkeypatch.delenv("SHELL")
    assert shell_exec_args({"term": "vt100"})["argv"] == ["/bin/sh"]
    assert shell_exec_args({"term": "vt100"})["env"]["TERM"] == "vt100"

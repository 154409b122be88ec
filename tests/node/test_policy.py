"""Policy guardrails, pure: every rule refuses with its name, control kinds never."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tether.node.policy import Policy, PolicyError


def test_no_policy_file_means_the_permissive_default(tmp_path: Path) -> None:
    policy = Policy.load(tmp_path / "policy.json")
    assert policy.check("exec", {"argv": ["rm", "-rf", "/tmp/x"]}) is None
    assert policy.summary()["source"] == "default"


def test_deny_and_allow_kinds_name_the_rule_that_refused() -> None:
    policy = Policy.from_dict({"allow_kinds": ["exec", "diag.ping"], "deny_kinds": ["exec"]})
    assert policy.check("exec", {"argv": ["true"]}) == "kind 'exec' is in deny_kinds"
    assert policy.check("update.now", {}) == "kind 'update.now' is not in allow_kinds"
    assert policy.check("diag.ping", {}) is None


def test_control_kinds_are_never_refused() -> None:
    policy = Policy.from_dict({"allow_kinds": ["diag.ping"], "deny_kinds": ["cancel"]})
    for kind in ("cancel", "pause", "resume"):
        assert policy.check(kind, {"command_id": "c"}) is None


def test_the_exec_allowlist_matches_names_and_paths_alike() -> None:
    echo = shutil.which("echo")
    assert echo is not None
    policy = Policy.from_dict({"exec_allow": ["echo", "/bin/true"]})
    assert policy.check("exec", {"argv": ["echo", "hi"]}) is None
    assert policy.check("exec", {"argv": [echo, "hi"]}) is None  # same file as "echo"
    assert policy.check("exec", {"argv": ["/bin/true"]}) is None
    assert policy.check("exec", {"argv": ["sh", "-c", "echo"]}) == \
        "executable 'sh' is not in exec_allow"
    assert policy.check("exec", {"argv": []}) == "executable None is not in exec_allow"


def test_timeouts_default_and_cap() -> None:
    policy = Policy.from_dict({"default_timeout_s": 30, "max_timeout_s": 60})
    assert policy.effective_timeout({}) == 30
    assert policy.effective_timeout({"timeout_s": 5}) == 5
    assert policy.check("exec", {"argv": ["true"], "timeout_s": 61}) == \
        "timeout_s 61 exceeds max_timeout_s 60"


@pytest.mark.parametrize("raw, message", [
    ([], "must be a JSON object"),
    ({"allow": ["exec"]}, "unknown field"),
    ({"allow_kinds": "exec"}, "'allow_kinds' must be a list of strings"),
    ({"max_concurrent": 0}, "'max_concurrent' must be a positive integer"),
    ({"max_concurrent": 2.5}, "'max_concurrent' must be a positive integer"),
    ({"default_timeout_s": 10, "max_timeout_s": 5}, "default_timeout_s exceeds"),
])
def test_a_bad_policy_is_refused_naming_the_field(raw: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(raw)


def test_a_policy_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text("{nope")
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(path)
    path.write_text(json.dumps({"max_output_bytes": 10}))
    assert Policy.load(path).max_output_bytes == 10

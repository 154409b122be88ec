"""Policy guardrails, pure: every rule refuses with its name, control kinds never."""

from __future__ import annotations

import json
import os
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


# -- issue 11 item 7: the policy judges what will actually run ------------------------------

WALLED = {"exec_allow": ["uptime", "echo", "sleep"], "max_timeout_s": 2}


def plant(directory: Path, name: str) -> Path:
    """An executable script called ``name`` in ``directory``: the attacker's binary."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\necho planted\n")
    path.chmod(0o755)
    return path


def test_a_path_override_cannot_pick_a_planted_binary_for_an_allowed_name(
        tmp_path: Path) -> None:
    plant(tmp_path / "evil", "uptime")
    policy = Policy.from_dict(WALLED)
    args = {"argv": ["uptime"], "env": {"PATH": str(tmp_path / "evil")}}
    assert policy.check("exec", args) == \
        "env PATH may change what runs; allow it with exec_env_allow"
    # Even where the policy lets a command set PATH, the name resolves through that PATH
    # to the planted file, which is not the allowed one.
    lifted = Policy.from_dict({**WALLED, "exec_env_allow": ["PATH"]})
    assert lifted.check("exec", args) == "executable 'uptime' is not in exec_allow"
    plan = lifted.plan_exec({"argv": ["uptime"], "env": {"PATH": os.defpath}})
    assert plan.argv[0] == os.path.join(os.path.realpath(os.path.dirname(
        shutil.which("uptime") or "")), "uptime")


@pytest.mark.parametrize("name", [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "DYLD_INSERT_LIBRARIES", "PYTHONPATH",
    "PYTHONSTARTUP", "PYTHONHOME", "PYTHONWARNINGS", "PERL5LIB", "PERL5OPT", "RUBYOPT",
    "RUBYLIB", "NODE_OPTIONS", "BASH_ENV", "ENV", "IFS", "GCONV_PATH", "GLIBC_TUNABLES",
    "BASH_FUNC_echo%%", "SHELLOPTS", "PS4", "OPENSSL_CONF", "GIT_SSH_COMMAND",
    "JAVA_TOOL_OPTIONS", "HOME",
])
def test_loader_and_interpreter_variables_are_refused_under_exec_allow(name: str) -> None:
    policy = Policy.from_dict(WALLED)
    rule = policy.check("exec", {"argv": ["echo", "hi"], "env": {name: "/tmp/evil.so"}})
    assert rule == f"env {name} may change what runs; allow it with exec_env_allow"


def test_exec_env_allow_lifts_a_guard_by_pattern_and_harmless_variables_pass() -> None:
    policy = Policy.from_dict({**WALLED, "exec_env_allow": ["LD_LIBRARY_PATH", "PYTHON*"]})
    ok = {"LD_LIBRARY_PATH": "/opt/lib", "PYTHONPATH": "/opt/py", "RATE": "5"}
    assert policy.check("exec", {"argv": ["echo"], "env": ok}) is None
    assert policy.check("exec", {"argv": ["echo"], "env": {"LD_PRELOAD": "/x.so"}}) == \
        "env LD_PRELOAD may change what runs; allow it with exec_env_allow"
    # Without exec_allow any program may run: the guards would protect nothing.
    assert Policy().check("exec", {"argv": ["echo"], "env": {"LD_PRELOAD": "/x.so"}}) is None


@pytest.mark.parametrize("env", [
    {"A=B": "x"}, {"": "x"}, {"A\0B": "x"}, {"A": "x\0y"}, {"A": 5}, ["A", "x"],
])
def test_an_env_that_execve_would_choke_on_is_refused_not_crashed_on(env: object) -> None:
    for policy in (Policy(), Policy.from_dict(WALLED)):
        rule = policy.check("exec", {"argv": ["echo"], "env": env})
        assert rule is not None and "env" in rule


def test_a_nul_in_argv_is_refused() -> None:
    assert Policy().check("exec", {"argv": ["echo", "a\0b"]}) == \
        "argv must not contain NUL characters"


@pytest.mark.parametrize("program", ["./echo", "echo/../echo", "../evil/echo"])
def test_a_relative_argv0_resolves_against_the_cwd_the_process_gets(
        tmp_path: Path, program: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime itself sits where the real echo is; the process starts in "work".
    monkeypatch.chdir(os.path.dirname(shutil.which("echo") or "/"))
    plant(tmp_path / "work", "echo")
    plant(tmp_path / "evil", "echo")
    policy = Policy.from_dict(WALLED)
    rule = policy.check("exec", {"argv": [program], "cwd": str(tmp_path / "work")})
    assert rule == f"executable {program!r} is not in exec_allow"


def test_a_dotted_absolute_path_to_the_allowed_file_runs_that_file() -> None:
    echo = shutil.which("echo")
    assert echo is not None
    policy = Policy.from_dict(WALLED)
    dotted = "/tmp/../" + echo.lstrip("/")
    plan = policy.plan_exec({"argv": [dotted, "hi"]})
    assert os.path.realpath(plan.argv[0]) == os.path.realpath(echo)
    assert ".." not in plan.argv[0] and plan.argv[1:] == ("hi",)


def test_a_link_to_an_allowed_file_under_another_name_is_refused(tmp_path: Path) -> None:
    """A multi-call binary (busybox) runs the applet its file name says: a link named
    ``sh`` to the allowed ``echo`` file must not pass as ``echo``."""
    echo = os.path.realpath(shutil.which("echo") or "")
    (tmp_path / "sh").symlink_to(echo)
    policy = Policy.from_dict(WALLED)
    assert policy.check("exec", {"argv": [str(tmp_path / "sh")]}) == \
        f"executable {str(tmp_path / 'sh')!r} is not in exec_allow"


def test_a_cwd_outside_exec_cwd_allow_is_refused_after_links_and_dots(
        tmp_path: Path) -> None:
    (tmp_path / "work" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "work" / "link").symlink_to(tmp_path / "other")
    policy = Policy.from_dict({**WALLED, "exec_cwd_allow": [str(tmp_path / "work")]})
    for hostile in (str(tmp_path / "work" / ".." / "other"), str(tmp_path / "work" / "link"),
                    str(tmp_path / "workshop"), "/"):
        assert policy.check("exec", {"argv": ["echo"], "cwd": hostile}) == \
            f"cwd {hostile!r} is not under exec_cwd_allow"
    plan = policy.plan_exec({"argv": ["echo"], "cwd": str(tmp_path / "work" / "sub")})
    assert plan.cwd == os.path.realpath(tmp_path / "work" / "sub")
    assert policy.plan_exec({"argv": ["echo"]}).cwd == str(tmp_path / "work")


def test_max_timeout_applies_when_no_timeout_is_sent() -> None:
    policy = Policy.from_dict(WALLED)
    assert policy.plan_exec({"argv": ["sleep", "5"]}).timeout_s == 2
    assert policy.plan_exec({"argv": ["sleep", "5"], "timeout_s": None}).timeout_s == 2
    assert policy.plan_exec({"argv": ["sleep", "5"], "timeout_s": 1}).timeout_s == 1
    with_default = Policy.from_dict({**WALLED, "default_timeout_s": 1.5})
    assert with_default.plan_exec({"argv": ["sleep", "5"]}).timeout_s == 1.5


@pytest.mark.parametrize("timeout", ["5", True, float("nan"), float("inf"), -1, 0, [5]])
def test_a_timeout_that_is_not_a_finite_positive_number_is_refused(timeout: object) -> None:
    rule = Policy.from_dict(WALLED).check("exec", {"argv": ["sleep", "5"],
                                                   "timeout_s": timeout})
    assert rule == f"timeout_s {timeout!r} is not a positive number of seconds"


@pytest.mark.parametrize("raw, message", [
    ({"exec_allow": ["bin/echo"]}, "must be a bare name or an absolute path"),
    ({"exec_cwd_allow": ["work"]}, "must be an absolute path"),
    ({"max_timeout_s": float("inf")}, "'max_timeout_s' must be a positive number"),
])
def test_policy_entries_that_would_resolve_by_accident_are_refused(
        raw: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(raw)

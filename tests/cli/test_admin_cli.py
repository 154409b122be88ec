"""`tether token|audit|join-token|nodes` admin verbs: what they send, and what the parser
refuses before anything is sent (cli/admin.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tether.cli import admin
from tether.cli import main as cli_main
from tether.cli.client import Api
from tether.controller.domain.roles import ROLES


def sent(monkeypatch: pytest.MonkeyPatch, argv: list[str], answer: Any
         ) -> list[tuple[str, str, Any]]:
    """The (method, path, json or params) requests `tether ARGV` makes, each answered."""
    calls: list[tuple[str, str, Any]] = []

    def request(self: Api, method: str, path: str, **kw: Any) -> Any:
        calls.append((method, path, kw.get("json", kw.get("params"))))
        return answer
    monkeypatch.setattr(Api, "request", request)
    args = cli_main.build_parser().parse_args([*argv, "--url", "http://x", "--token", "t"])
    assert cli_main.dispatch(args) == 0
    return calls


def test_token_create_sends_role_name_and_the_ttl_in_seconds(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls = sent(monkeypatch, ["token", "create", "--role", "operator", "--name", "ci",
                               "--ttl", "2h"],
                 {"token": "tok_s", "token_id": "tk_1", "role": "operator"})
    assert calls == [("POST", "/api/v1/tokens",
                      {"role": "operator", "name": "ci", "ttl_s": 7200.0})]
    out = capsys.readouterr()
    assert out.out == "tok_s\n" and "tk_1" in out.err  # the secret alone on stdout


def test_the_delete_and_revoke_verbs_send_delete_to_the_ids_route(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answer = {"session_closed": False}
    assert sent(monkeypatch, ["token", "revoke", "tk_9"], answer) == [
        ("DELETE", "/api/v1/tokens/tk_9", None)]
    assert sent(monkeypatch, ["join-token", "revoke", "jt_9"], answer) == [
        ("DELETE", "/api/v1/join-tokens/jt_9", None)]
    assert sent(monkeypatch, ["nodes", "delete", "n-1"], answer) == [
        ("DELETE", "/api/v1/nodes/n-1", None)]
    assert sent(monkeypatch, ["audit", "--limit", "5", "--before", "90"],
                {"items": [], "next_before": None}) == [
        ("GET", "/api/v1/audit", {"limit": 5, "before": 90})]


@pytest.mark.parametrize("argv", [["token", "create", "--role", "root"],
                                  ["token", "create"], ["token", "revoke"],
                                  ["nodes", "delete"], ["audit", "--limit", "x"]])
def test_bad_admin_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main.build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_the_cli_offers_the_roles_the_controller_knows() -> None:
    assert admin.ROLES == ROLES

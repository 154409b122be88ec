"""Every flag of every ``tether`` command says what it does in ``--help``, and ``tether
commands --help`` lists every verb (``show`` and ``list`` included)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from tether.cli.main import build_parser


def walk(parser: argparse.ArgumentParser, path: str = "tether"
         ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def test_every_flag_of_every_command_has_help() -> None:
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}"
               for path, parser in walk(build_parser())
               for a in parser._actions
               if not isinstance(a, argparse._SubParsersAction)
               and a.dest != "help" and not a.help]
    assert not missing, "flags without help:\n" + "\n".join(missing)


def test_every_verb_of_every_noun_has_help() -> None:
    missing = [f"{path} {choice.dest}"
               for path, parser in walk(build_parser())
               for a in parser._actions if isinstance(a, argparse._SubParsersAction)
               for choice in a._choices_actions if not choice.help]
    names = {path for path, _ in walk(build_parser())}
    verbs = {p for p in names if p.count(" ") == 2}
    unhelped = {f"tether {n}" for n in missing}
    assert not missing, f"verbs without help: {sorted(unhelped)} of {len(verbs)}"


def test_commands_help_lists_show_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["commands", "--help"])
    out = capsys.readouterr().out
    for verb in ("show", "list", "cancel", "pause", "resume"):
        assert verb in out.split("positional arguments:")[1], verb

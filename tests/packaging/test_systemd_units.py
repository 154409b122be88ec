"""The systemd units in packaging/systemd/ are the ones docs/operations.md shows, word for
word, and their commands are command lines ``tether`` accepts (so a renamed flag breaks
this test, not an operator's boot). ``systemd-analyze verify`` checks them where present."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from tether.cli.main import build_parser

from ..conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "packaging" / "systemd").glob("*.service"))


def exec_lines(text: str) -> list[list[str]]:
    """Each Exec*= of a unit as argv, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line.split("=", 1)[1]) for line in joined.splitlines()
            if line.startswith(("ExecStart=", "ExecStop="))]


def test_there_is_a_unit_for_the_controller_beside_the_nodes() -> None:
    assert {u.name for u in UNITS} >= {"tether-controller.service", "tether-node.service"}


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_docs_show_the_unit_as_shipped(unit: Path) -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert "```ini\n" + unit.read_text() + "```" in docs, f"docs/operations.md differs " \
        f"from {unit.relative_to(ROOT)}"


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_units_commands_are_tether_command_lines(unit: Path) -> None:
    lines = exec_lines(unit.read_text())
    assert lines
    for argv in lines:
        assert argv[0].endswith("/tether")
        build_parser().parse_args(argv[1:])  # SystemExit(2) on a flag tether lacks


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_accepts_the_unit(unit: Path) -> None:
    analyze = require_binary("systemd-analyze", "the systemd package checks the units")
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True,
                         text=True, timeout=30)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if line.strip() and "is not executable" not in line]  # not installed here
    assert not problems, problems

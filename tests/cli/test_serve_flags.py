"""`tether controller serve` flags reach the object that enforces them: the CLI builds the
ControllerConfig, and app.build hands each knob to its owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.cli import main as cli_main
from tether.controller.app import build
from tether.controller.config import ControllerConfig


def served_config(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> ControllerConfig:
    """The ControllerConfig `tether controller serve ARGV` would serve, without serving."""
    import tether.controller.server as server

    seen: list[ControllerConfig] = []
    monkeypatch.setattr(server, "serve", lambda config: seen.append(config) or 0)
    args = cli_main.build_parser().parse_args(["controller", "serve", *argv])
    assert cli_main.dispatch(args) == 0
    (config,) = seen
    return config


def test_the_dead_letter_cap_flag_reaches_the_store(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    config = served_config(monkeypatch, ["--data-dir", str(tmp_path),
                                         "--max-dead-letters-per-node", "7"])
    assert config.max_dead_letters_per_node == 7
    assert build(config).store.max_dead_letters_per_node == 7


def test_the_dead_letter_cap_defaults_to_a_thousand_per_node(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = served_config(monkeypatch, ["--data-dir", str(tmp_path)])
    assert build(config).store.max_dead_letters_per_node == 1000


def test_the_pending_evt_byte_bound_flag_reaches_the_config(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    config = served_config(monkeypatch, ["--data-dir", str(tmp_path),
                                         "--max-pending-evt-bytes", "123456"])
    assert config.max_pending_evt_bytes == 123456
    default = served_config(monkeypatch, ["--data-dir", str(tmp_path)])
    assert default.max_pending_evt_bytes == ControllerConfig().max_pending_evt_bytes == 8 << 20

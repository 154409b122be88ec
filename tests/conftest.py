"""Fixtures: a real controller process and enrolled node processes, torn down after use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import ControllerProc, NodeProc, wait_until


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProc]:
    ctl = ControllerProc(tmp_path / "controller")
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


@pytest.fixture
def make_node(tmp_path: Path, controller: ControllerProc
              ) -> Iterator[Callable[..., NodeProc]]:
    """make_node(node_id, start=True): an enrolled node process, online when returned."""
    nodes: list[NodeProc] = []

    def make(node_id: str, *, start: bool = True, extra: list[str] | None = None) -> NodeProc:
        node = NodeProc(tmp_path / node_id, node_id, extra=extra)
        node.enroll(controller)
        nodes.append(node)
        if start:
            node.start()
            api = controller.api()
            wait_until(lambda: api.liveness(node_id) == "online",
                       what=f"{node_id} online")
        return node

    try:
        yield make
    finally:
        for node in nodes:
            node.cleanup()

"""``tether cp``'s SRC / DST: NODE:PATH or a local path (cli/cp.py)."""

from __future__ import annotations

import pytest

from tether.cli.cp import Place, parse_place


@pytest.mark.parametrize("text,place", [
    ("n1:data.bin", Place("n1", "data.bin")),
    ("n-2:", Place("n-2", "")),
    ("n1:dir/x:y", Place("n1", "dir/x:y")),
    ("./n1:x", Place(None, "./n1:x")),
    ("/tmp/a", Place(None, "/tmp/a")),
    ("Node:x", Place(None, "Node:x")),
    ("plain", Place(None, "plain")),
])
def test_a_side_is_a_node_path_only_when_a_node_id_precedes_the_colon(
        text: str, place: Place) -> None:
    assert parse_place(text) == place

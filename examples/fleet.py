"""A one-machine fleet: a controller and three nodes on loopback, until Ctrl-C.

    .venv/bin/python examples/fleet.py

Then, in another terminal: ``.venv/bin/tether nodes list`` and
``.venv/bin/tether exec demo-node-2 -- uname -a``.
"""

from __future__ import annotations

import sys

from tether.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["demo", "--nodes", "3", *sys.argv[1:]]))

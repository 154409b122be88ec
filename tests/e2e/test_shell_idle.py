"""A shell left idle longer than the node's lease (60 s without a frame from the operator's
side hangs a shell up) stays open: the keepalives of the io endpoint are what keep it, not
the operator typing. The node runs with a lease of 15 s (``--io-lease-s``), still over the
controller's keepalive period (10 s, unchanged), so the idle wait is 20 s, not a minute; a
stream without keepalives would be hung up within it all the same. SQLite only: the
keepalives are the same code on either backend."""

from __future__ import annotations

import time
from collections.abc import Callable

from tether.protocol.iostream import KEEPALIVE_S

from ..helpers import ControllerProc, NodeProc
from .test_remote_io import PtyCli, cli

LEASE_S = 15.0  # the node's --io-lease-s here: over KEEPALIVE_S with room, under a minute


def test_a_shell_left_idle_past_the_lease_still_answers(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    assert LEASE_S >= KEEPALIVE_S + 5  # a keepalive is due well before the lease runs out
    make_node("n-idle", extra=["--io-lease-s", str(LEASE_S)])
    term = PtyCli(cli(controller, "shell", "n-idle", "--", "sh", "-i"))
    try:
        term.expect(rb"[#$] ")
        idle_until = time.monotonic() + LEASE_S + 5
        while time.monotonic() < idle_until:  # nothing typed; what arrives is kept
            term.read_some()
            time.sleep(0.5)
            assert term.proc.poll() is None, term.seen
        term.type(b"echo still-$((20+1))\r")
        term.expect(rb"still-21")
        term.type(b"exit\r")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.close()

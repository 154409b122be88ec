"""Failpoints: named places where a test can crash or stall a real process (issue 16).

A test arms points through one environment variable, read once when this module is first
imported (so once per process, before any store opens)::

    TETHER_FAILPOINTS="outbox.after_append=crash;gateway.before_ack=stall:5;x.y=crash:3@10"

Actions (``name=action``, separated by ``;``):

* ``crash`` — ``os._exit(CRASH_EXIT_CODE)``: no ``finally``, no atexit, no buffer flushed,
  exactly like ``kill -9`` at that line (one line naming the point goes to fd 2 first, by a
  raw ``os.write``, so a failing test can say where its process died).
* ``crash:CODE`` — the same with exit code ``CODE`` (1..255).
* ``stall:SECONDS`` — sleep that long (``time.sleep`` in :func:`hit`, which blocks the whole
  thread, event loop included, like a paused VM; ``asyncio.sleep`` in :func:`hit_async`,
  which stalls only the coroutine that reached the point).
* any of them with ``@N`` — fire on the Nth hit of that point only (1-based; hits before and
  after pass through). Without ``@N`` a stall fires on every hit.

Contract:
* Rule 1: an unknown point name, a malformed action or a duplicate name in the variable is an
  error when the process starts (:class:`FailpointError` from the import), never ignored: a
  typo would otherwise make a crash test pass without crashing anything.
* Rule 2: every name a call site passes is in :data:`KNOWN_POINTS` (``tests/common/
  test_failpoints.py`` greps the code base for call sites); :func:`hit` with an unknown name
  raises while armed, so a test of that point fails instead of silently passing.
* Rule 3: zero cost when not armed. Call sites are written::

      if failpoints.ARMED:
          failpoints.hit("outbox.after_append")

  which is one module-attribute load and a truth test when ``TETHER_FAILPOINTS`` is unset or
  empty: no call, no dict lookup, no lock. Measured on the CI box (2 cores, CPython 3.11,
  ``python -m timeit -s "from tether.common import failpoints as f" "if f.ARMED: f.hit('x')"``):
  about 21 ns per pass, against about 9.5 ns for ``pass`` alone (so ~11 ns: a global
  load, an attribute load, a test); calling :func:`hit` unguarded costs about 39 ns (a call
  that returns at its first test). Figures, not assertions: speed
  targets live in ``tether bench``.

Reading the environment here, not in a config object (STYLE.md 11), is deliberate: failpoints
belong to the test harness, must be armed in every process kind (controller, runtime,
sidecar, ``tether`` CLI) without threading a flag through each one's config, and must be in
force before that config is even read (a crash in the middle of a migration).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from dataclasses import dataclass

ENV_VAR = "TETHER_FAILPOINTS"
CRASH_EXIT_CODE = 86  # distinctive: a test that expects a failpoint crash can tell it apart

# The registry. A point is added here in the same commit as its call site; the description
# says where it is and what is (not) yet durable when it fires, which is what a test of it
# checks afterwards.
KNOWN_POINTS: dict[str, str] = {
    "outbox.after_append": "node runtime: a class A frame is committed to the outbox and "
                           "its append acknowledged to the caller; nothing sent yet",
    "outbox.after_send": "node runtime: a class A frame was handed to the local link (sidecar) "
                         "for sending; its ack not yet seen",
    "sidecar.after_send": "sidecar: a class A frame was written to the controller's socket; "
                          "its ack not yet relayed",
    "gateway.before_ack": "controller: a batch of evt frames is committed (effects and "
                          "cursor), the edge.ack for it not yet sent",
    "outbox.after_ack_before_delete": "node runtime: an edge.ack arrived; the acked frames "
                                      "are not yet deleted from the outbox",
    "inbox.after_apply_before_commit": "node runtime: a cmd.deliver was applied inside the "
                                       "transaction that moves the cmd cursor, before COMMIT",
    "gateway.after_apply_before_commit": "controller: evt frames were applied inside the "
                                         "transaction that moves the evt cursor, before COMMIT",
    "store.mid_migration": "any SQLite or PostgreSQL store: inside a migration's transaction, "
                           "after each of its statements (@N picks the Nth statement of "
                           "the run), before COMMIT",
    "bundles.mid_activation": "node: during a bundle's activation, between moving the new "
                              "version in and recording it as active",
    "gateway.mid_claim": "controller (cluster): the hello's ownership claim (owner_epoch "
                         "compare-and-set) is written but not yet committed",
    "gateway.after_claim": "controller (cluster): the ownership claim is committed; the old "
                           "owner not yet told to close its connection",
}

_SPEC_RE = re.compile(
    r"^(?P<kind>crash|stall)(?::(?P<arg>[0-9]+(?:\.[0-9]+)?))?(?:@(?P<nth>[0-9]+))?$")


class FailpointError(ValueError):
    """A malformed ``TETHER_FAILPOINTS`` or a point name the registry does not know."""


@dataclass(frozen=True)
class Action:
    """What an armed point does: ``kind`` crash or stall, ``code`` (crash) or ``stall_s``,
    and ``nth`` (fire on that hit only; None = every hit)."""

    kind: str
    code: int = CRASH_EXIT_CODE
    stall_s: float = 0.0
    nth: int | None = None


def parse(spec: str) -> dict[str, Action]:
    """Parse a ``TETHER_FAILPOINTS`` value; raise :class:`FailpointError` naming what is wrong.

    Empty entries (a trailing ``;``) and surrounding spaces are allowed.
    """
    actions: dict[str, Action] = {}
    for raw in spec.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, action_text = (part.strip() for part in entry.partition("="))
        if not sep:
            raise FailpointError(f"failpoint entry {entry!r} has no '=': write name=crash or "
                                 "name=stall:SECONDS")
        if name not in KNOWN_POINTS:
            raise FailpointError(f"unknown failpoint {name!r} in {ENV_VAR}; known points: "
                                 f"{', '.join(sorted(KNOWN_POINTS))}")
        if name in actions:
            raise FailpointError(f"failpoint {name!r} is armed twice in {ENV_VAR}")
        match = _SPEC_RE.match(action_text)
        if match is None:
            raise FailpointError(f"failpoint {name!r}: action {action_text!r} is not crash, "
                                 "crash:CODE, stall:SECONDS, optionally followed by @N")
        kind, arg, nth_text = match["kind"], match["arg"], match["nth"]
        nth = int(nth_text) if nth_text is not None else None
        if nth is not None and nth < 1:
            raise FailpointError(f"failpoint {name!r}: @N counts hits from 1, got @{nth}")
        if kind == "crash":
            code = CRASH_EXIT_CODE if arg is None else _exit_code(name, arg)
            actions[name] = Action("crash", code=code, nth=nth)
        else:
            if arg is None:
                raise FailpointError(f"failpoint {name!r}: stall needs seconds, e.g. stall:5")
            actions[name] = Action("stall", stall_s=float(arg), nth=nth)
    return actions


def spec(points: dict[str, str]) -> str:
    """The ``TETHER_FAILPOINTS`` value arming ``points`` (name -> action), checked first, so a
    test that builds a child's environment fails at once on a typo, not in the child."""
    value = ";".join(f"{name}={action}" for name, action in points.items())
    parse(value)
    return value


def _exit_code(name: str, text: str) -> int:
    if "." in text or not 1 <= int(text) <= 255:
        raise FailpointError(f"failpoint {name!r}: exit code must be an integer 1..255, "
                             f"got {text}")
    return int(text)


# Module state. ARMED is the only thing an unarmed process ever reads (Rule 3).
ARMED = False
_actions: dict[str, Action] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()


def configure(spec: str) -> None:
    """Arm exactly the points in ``spec`` (replacing any armed before) and reset hit counts.

    Called once at import with the environment's value; tests of this module call it
    in-process too. Raises :class:`FailpointError` and leaves the state unchanged when
    ``spec`` is bad.
    """
    global ARMED, _actions
    actions = parse(spec)
    with _lock:
        _actions = actions
        _hits.clear()
        ARMED = bool(actions)


def hits(name: str) -> int:
    """How many times ``name`` was reached while armed (0 when unarmed: nothing counts)."""
    with _lock:
        return _hits.get(name, 0)


def _due(name: str) -> Action | None:
    """Count this hit; return the action to take now, or None. Raises on an unknown name."""
    if name not in KNOWN_POINTS:
        raise FailpointError(f"failpoint {name!r} is not in KNOWN_POINTS; register it in "
                             "common/failpoints.py")
    with _lock:
        count = _hits.get(name, 0) + 1
        _hits[name] = count
        action = _actions.get(name)
    if action is None or (action.nth is not None and action.nth != count):
        return None
    return action


def _crash(name: str, code: int) -> None:
    # A raw write: nothing buffered in this process is flushed, as with kill -9.
    os.write(2, f"failpoint {name}: crash (exit {code}, pid {os.getpid()})\n".encode())
    os._exit(code)


def hit(name: str) -> None:
    """Reach point ``name`` in synchronous code (a thread, or a coroutine on purpose: a stall
    here blocks the event loop, like a paused process)."""
    if not ARMED:
        return
    action = _due(name)
    if action is None:
        return
    if action.kind == "crash":
        _crash(name, action.code)
    time.sleep(action.stall_s)


async def hit_async(name: str) -> None:
    """Reach point ``name`` in a coroutine: a stall suspends only this coroutine."""
    if not ARMED:
        return
    action = _due(name)
    if action is None:
        return
    if action.kind == "crash":
        _crash(name, action.code)
    await asyncio.sleep(action.stall_s)


configure(os.environ.get(ENV_VAR, ""))

"""Rollouts (issue 15): the ``POST /api/v1/rollouts`` request as a typed value, the
placement of nodes into rings, and the rules that move a rollout (docs/protocol.md
"Rollouts"). Pure: the controller's store and engine (controller/services/rollouts.py)
feed it values and carry out what it decides.

Rule 1 (parsed once, bounded): :func:`parse_rollout` checks the whole body, field by field,
and raises :class:`~.errors.BadFrame` naming the first field off the rules (the API turns it
into 400 ``invalid_request``); unknown fields are refused (a typo must not start a rollout
with a default).
Rule 2 (rings): :func:`place` puts each node in exactly one ring, the first that takes it.
A ring with ``percent`` p is **cumulative**: it reaches the first ceil(p * N / 100) of the N
selected nodes (in node id order), less those earlier rings took; a ring with ``nodes``
takes the nodes it lists. Selected nodes no ring reaches are left out of the rollout.
Rule 3 (failures): a node *failed* when it ended ``rejected``, ``failed`` or
``rolled_back`` on the new version (or its offer ended without a report: cancelled,
expired, failed). ``failure_threshold`` is how many failed nodes the rollout tolerates;
one more trips ``on_failure``.
Rule 4 (advance): the current ring is done when each of its nodes is either *ready*
(``healthy`` on the new version, running it now, and connected to the controller on its
current session) or a tolerated failure; then the next ring starts, and after the last the
rollout is ``completed``.
Rule 5 (flight): at most ``max_unavailable`` nodes of the current ring are mid-update
(offered and not yet ended) at once; the next offers go in placement order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .bundle import MAX_VERSION
from .errors import BadFrame
from .update import DEFAULT_FAILURE_THRESHOLD, MAX_FAILURE_THRESHOLD, MAX_PROBATION_S
from .values import int_in, number_in, text

ROLLOUT_STATES = ("running", "paused", "completed", "halted", "aborted")
FINAL_STATES = frozenset({"completed", "halted", "aborted"})
ON_FAILURE = ("halt", "rollback", "pause")
MAX_RINGS = 16
MAX_ROLLOUT_NODES = 10_000  # its rows are written in one transaction, as a job's
MAX_FAILURES_TOLERATED = MAX_ROLLOUT_NODES
MAX_SELECTOR_LABELS = 64
DEFAULT_PROBATION_S = 30.0
# node states in a rollout: before its offer, mid-update, and the ends (Rule 3)
NOT_OFFERED = frozenset({"pending", "offering"})
IN_FLIGHT = frozenset({"offered", "downloading", "verified", "deferred", "activated"})
FAILED = frozenset({"rejected", "failed", "rolled_back"})
NODE_ENDS = FAILED | {"healthy", "skipped", "cancelled"}

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_RING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_NODE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_FIELDS = frozenset({"bundle", "version", "selector", "rings", "max_unavailable",
                     "probation_s", "failure_threshold", "on_failure", "max_failed_starts",
                     "force"})


@dataclass(frozen=True, slots=True)
class Ring:
    """One ring: ``percent`` (cumulative, 1-100) or ``nodes`` (explicit ids), not both."""

    name: str
    percent: float | None = None
    nodes: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return ({"name": self.name, "percent": self.percent} if self.nodes is None
                else {"name": self.name, "nodes": list(self.nodes)})


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """A checked rollout request (Rule 1). ``failure_threshold``: nodes that may fail
    (Rule 3) before ``on_failure``; ``max_failed_starts``: the offer's own
    ``failure_threshold``, the failed starts within probation after which a node rolls
    back by itself."""

    bundle: str
    version: int
    selector: Mapping[str, str]
    rings: tuple[Ring, ...]
    max_unavailable: int = 1
    probation_s: float = DEFAULT_PROBATION_S
    failure_threshold: int = 0
    on_failure: str = "halt"
    max_failed_starts: int = DEFAULT_FAILURE_THRESHOLD
    force: bool = False  # the offer's: a runtime update even while live media runs

    def to_json(self) -> dict[str, Any]:
        """What the store keeps of the request, and :func:`spec_from_json` reads back."""
        return {"bundle": self.bundle, "version": self.version,
                "selector": dict(self.selector),
                "rings": [r.to_json() for r in self.rings],
                "max_unavailable": self.max_unavailable, "probation_s": self.probation_s,
                "failure_threshold": self.failure_threshold, "on_failure": self.on_failure,
                "max_failed_starts": self.max_failed_starts, "force": self.force}


def _ring(value: object, i: int) -> Ring:
    where = f"rings[{i}]"
    if not isinstance(value, Mapping):
        raise BadFrame(f"field {where!r} must be an object with 'name' and 'percent' or "
                       "'nodes'")
    unknown = sorted(set(value) - {"name", "percent", "nodes"})
    if unknown:
        raise BadFrame(f"field '{where}.{str(unknown[0])[:32]}' is not known")
    name = value.get("name")
    if not isinstance(name, str) or not _RING_NAME.fullmatch(name):
        raise BadFrame(f"field '{where}.name' must be 1-32 of [A-Za-z0-9_.-]")
    if ("percent" in value) == ("nodes" in value):
        raise BadFrame(f"field {where!r} needs exactly one of 'percent' and 'nodes'")
    if "percent" in value:
        return Ring(name, percent=number_in(value["percent"], f"{where}.percent", 0.001, 100))
    nodes = value["nodes"]
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_ROLLOUT_NODES:
        raise BadFrame(f"field '{where}.nodes' must be a list of 1 to {MAX_ROLLOUT_NODES} "
                       "node ids")
    for node in nodes:
        if not isinstance(node, str) or not _NODE_ID.fullmatch(node):
            raise BadFrame(f"field '{where}.nodes' holds something that is not a node id")
    if len(set(nodes)) != len(nodes):
        raise BadFrame(f"field '{where}.nodes' lists a node twice")
    return Ring(name, nodes=tuple(nodes))


def parse_rollout(body: object) -> RolloutSpec:
    """The whole request by Rule 1."""
    if not isinstance(body, Mapping):
        raise BadFrame("a rollout must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise BadFrame(f"field {str(unknown[0])[:64]!r} is not known; a rollout takes "
                       f"{', '.join(sorted(_FIELDS))}")
    bundle = body.get("bundle")
    if not isinstance(bundle, str) or not _NAME.fullmatch(bundle):
        raise BadFrame("field 'bundle' must be a bundle name ([a-z0-9][a-z0-9-]{0,62})")
    selector = body.get("selector", {})
    if not isinstance(selector, Mapping) or len(selector) > MAX_SELECTOR_LABELS:
        raise BadFrame(f"field 'selector' must be an object of at most "
                       f"{MAX_SELECTOR_LABELS} labels (text to text)")
    labels = {text(k, "selector", max_len=64, min_len=1): text(v, "selector", max_len=256)
              for k, v in selector.items()}
    rings = body.get("rings")
    if not isinstance(rings, list) or not 1 <= len(rings) <= MAX_RINGS:
        raise BadFrame(f"field 'rings' must be a list of 1 to {MAX_RINGS} rings")
    parsed = tuple(_ring(r, i) for i, r in enumerate(rings))
    if len({r.name for r in parsed}) != len(parsed):
        raise BadFrame("field 'rings' names a ring twice")
    if sum(len(r.nodes or ()) for r in parsed) > MAX_ROLLOUT_NODES:
        raise BadFrame(f"field 'rings' lists more than {MAX_ROLLOUT_NODES} nodes")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadFrame("field 'force' must be a boolean")
    on_failure = body.get("on_failure", "halt")
    if on_failure not in ON_FAILURE:
        raise BadFrame(f"field 'on_failure' must be one of {', '.join(ON_FAILURE)}")
    return RolloutSpec(
        bundle=bundle, version=int_in(body.get("version"), "version", 1, MAX_VERSION),
        selector=labels, rings=parsed,
        max_unavailable=int_in(body.get("max_unavailable", 1), "max_unavailable", 1,
                               MAX_ROLLOUT_NODES),
        probation_s=number_in(body.get("probation_s", DEFAULT_PROBATION_S), "probation_s",
                              0, MAX_PROBATION_S),
        failure_threshold=int_in(body.get("failure_threshold", 0), "failure_threshold", 0,
                                 MAX_FAILURES_TOLERATED),
        on_failure=str(on_failure),
        max_failed_starts=int_in(body.get("max_failed_starts", DEFAULT_FAILURE_THRESHOLD),
                                 "max_failed_starts", 1, MAX_FAILURE_THRESHOLD),
        force=force)


def spec_from_json(value: Mapping[str, Any]) -> RolloutSpec:
    """A spec the store kept (:meth:`RolloutSpec.to_json`), parsed by the same rules."""
    return parse_rollout(value)


def place(spec: RolloutSpec, selected: Sequence[str]) -> list[tuple[str, int]]:
    """Rule 2: (node_id, ring index) for every node the rollout reaches, ring by ring, in
    node id order inside a percent ring and list order inside an explicit one."""
    order = sorted(set(selected))
    taken: set[str] = set()
    out: list[tuple[str, int]] = []
    for index, ring in enumerate(spec.rings):
        if ring.nodes is not None:
            members = [n for n in ring.nodes if n not in taken]
        else:
            assert ring.percent is not None
            reach = min(len(order), math.ceil(ring.percent * len(order) / 100 - 1e-9))
            members = [n for n in order[:reach] if n not in taken]
        taken.update(members)
        out.extend((n, index) for n in members)
    return out


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the engine knows of one node of a rollout when it decides: its state in the
    rollout, its ring and placement order, and whether it is *ready* (Rule 4: healthy on
    the new version, running it, connected on its current session now)."""

    node_id: str
    ring: int
    pos: int
    state: str
    ready: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now: ``offer`` these nodes; move to ``ring`` (an index; ``len(rings)``:
    completed); or trip ``on_failure`` with ``why``. At most one of ``advance``/``trip``."""

    offer: tuple[str, ...] = ()
    advance: int | None = None
    trip: Mapping[str, Any] | None = None
    waiting: Mapping[str, Any] | None = None  # why the ring has not advanced yet (for show)
    counts: Mapping[str, int] = field(default_factory=dict)


def failed_nodes(nodes: Iterable[NodeFacts]) -> list[NodeFacts]:
    return sorted((n for n in nodes if n.state in FAILED), key=lambda n: n.pos)


def decide(*, ring: int, rings: int, nodes: Sequence[NodeFacts], max_unavailable: int,
           failure_threshold: int, accepted_failures: int = 0) -> Decision:
    """Rules 3-5 for a running rollout at ``ring`` (index of the current ring).
    ``accepted_failures`` are failures an operator's resume accepted (they no longer
    count). Deterministic: the same facts give the same decision."""
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.state] = counts.get(n.state, 0) + 1
    failed = failed_nodes(nodes)
    if len(failed) - accepted_failures > failure_threshold:
        return Decision(trip={
            "check": "failure_threshold", "nodes": [n.node_id for n in failed],
            "figures": {"failed": len(failed), "threshold": failure_threshold,
                        "accepted": accepted_failures},
            "reasons": {n.node_id: n.reason for n in failed}}, counts=counts)
    current = sorted((n for n in nodes if n.ring == ring), key=lambda n: n.pos)
    not_done = [n for n in current if not n.ready and n.state not in FAILED
                and n.state not in ("skipped", "cancelled")]
    if not not_done:
        return Decision(advance=ring + 1, counts=counts)
    flying = sum(1 for n in current if n.state in IN_FLIGHT or n.state == "offering")
    room = max(0, max_unavailable - flying)
    offer = tuple(n.node_id for n in current if n.state == "pending")[:room]
    healthy_gone = [n.node_id for n in not_done if n.state == "healthy"]
    waiting = {"check": "ring_ready", "ring": ring,
               "nodes": [n.node_id for n in not_done][:100],
               "figures": {"ready": sum(1 for n in current if n.ready),
                           "nodes": len(current), "in_flight": flying,
                           "max_unavailable": max_unavailable},
               **({"not_connected": healthy_gone[:100]} if healthy_gone else {})}
    return Decision(offer=offer, waiting=waiting, counts=counts)


__all__ = ["FAILED", "FINAL_STATES", "IN_FLIGHT", "MAX_RINGS", "MAX_ROLLOUT_NODES",
           "NODE_ENDS", "NOT_OFFERED", "ON_FAILURE", "ROLLOUT_STATES", "Decision",
           "NodeFacts", "Ring", "RolloutSpec", "decide", "failed_nodes", "parse_rollout",
           "place", "spec_from_json"]

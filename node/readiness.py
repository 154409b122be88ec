"""The node's readiness tree, degraded matrix and incident ring — pure, clock passed in.

Readiness is derived from explicit signals only (transport state from the sidecar, the age
of the last heartbeat_ack, outbox depth and age, store health, executor load); the node is
never "ready" while a fresh incident says otherwise. The matrix says which operations are
allowed now and, when one is not, why. :func:`health_report` is what the controller is
told of both (the node page's readiness tree and incidents).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tether.protocol.errors import incident_for_close
from tether.protocol.health import (
    MAX_CLASS_CHARS,
    MAX_DETAIL_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_REASON_CHARS,
    MAX_REASONS,
    HealthCheck,
    HealthIncident,
    NodeHealth,
    clip,
)
from tether.protocol.liveness import Freshness, authority_freshness

INCIDENT_FRESH_S = 30.0  # an incident this recent keeps the node from being ready
MAX_INCIDENTS = 100


def incident_class(close_code: int | None) -> str:
    """Which kind of trouble a close code is: its incident in ERROR_TABLE's close codes
    ("transport" for a code not tabled, or None)."""
    return incident_for_close(close_code).value


@dataclass(slots=True)
class Incidents:
    """A bounded ring: past ``max_items`` the oldest incident is dropped."""

    max_items: int = MAX_INCIDENTS
    items: deque[dict[str, Any]] = field(default_factory=deque)
    # every incident recorded, by class, dropped from the ring or not (node/metrics.py)
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, now: float, klass: str, message: str, **fields: Any) -> None:
        self.counts[klass] = self.counts.get(klass, 0) + 1
        if len(self.items) >= self.max_items:
            self.items.popleft()
        self.items.append({"at": now, "class": klass, "message": message, **fields})

    def fresh(self, now: float, within_s: float = INCIDENT_FRESH_S) -> list[dict[str, Any]]:
        return [i for i in self.items if now - i["at"] < within_s]


@dataclass(frozen=True, slots=True)
class Signals:
    """Everything readiness is computed from, sampled at ``now`` (wall-clock seconds)."""

    now: float
    sidecar_attached: bool
    session_connected: bool
    last_ack_age_s: float | None
    heartbeat_s: float
    stale_after_s: float
    outbox_depth: int
    outbox_oldest_age_s: float
    max_outbox: int
    store_ok: bool
    store_error: str | None
    running: int
    max_concurrent: int


def _node(ok: bool, state: str, **detail: Any) -> dict[str, Any]:
    return {"ok": ok, "state": state, **detail}


def readiness(sig: Signals, incidents: Incidents) -> dict[str, Any]:
    """The tree: transport / control_authority / store / executors, and ``ready``."""
    if sig.session_connected:
        transport = _node(True, "connected")
    elif sig.sidecar_attached:
        transport = _node(False, "disconnected", detail="sidecar attached, no session")
    else:
        transport = _node(False, "no_sidecar", detail="runtime is not attached to a sidecar")
    fresh = authority_freshness(sig.last_ack_age_s, heartbeat_s=sig.heartbeat_s,
                                stale_after_s=sig.stale_after_s)
    authority = _node(fresh is Freshness.FRESH, fresh.value,
                      last_ack_age_s=None if sig.last_ack_age_s is None
                      else round(sig.last_ack_age_s, 3))
    store = _node(sig.store_ok, "ok" if sig.store_ok else "error", error=sig.store_error)
    outbox_full = sig.outbox_depth >= sig.max_outbox
    store["outbox"] = {"depth": sig.outbox_depth, "oldest_age_s": sig.outbox_oldest_age_s,
                       "max": sig.max_outbox, "full": outbox_full}
    saturated = sig.running >= sig.max_concurrent
    executors = _node(True, "saturated" if saturated else "ok", running=sig.running,
                      max=sig.max_concurrent)
    recent = incidents.fresh(sig.now)
    ready = (transport["ok"] and authority["ok"] and store["ok"] and not outbox_full
             and not recent)
    reasons = [name for name, part in (("transport", transport),
                                       ("control_authority", authority),
                                       ("store", store)) if not part["ok"]]
    if outbox_full:
        reasons.append("outbox_full")
    if recent:
        reasons.append(f"{len(recent)} incident(s) in the last {INCIDENT_FRESH_S:g} s")
    return {"ready": ready, "reasons": reasons, "transport": transport,
            "control_authority": authority, "store": store, "executors": executors}


def degraded_matrix(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Which operations are allowed now, each with the reason when it is not."""
    store_ok = tree["store"]["ok"]
    outbox_full = tree["store"]["outbox"]["full"]
    connected = tree["transport"]["ok"]
    fresh = tree["control_authority"]["ok"]
    saturated = tree["executors"]["state"] == "saturated"

    def rule(allowed: bool, reason: str) -> dict[str, Any]:
        return {"allowed": allowed, "reason": None if allowed else reason}

    return {
        "accept_commands": rule(store_ok, "store unhealthy: cannot persist a command"),
        "start_commands": rule(store_ok and not saturated,
                               "store unhealthy" if not store_ok else "all executor slots busy"),
        "queue_class_a": rule(store_ok and not outbox_full,
                              "store unhealthy" if not store_ok else "outbox full"),
        "upload_class_c": rule(connected, "no controller session: logs are buffered, then "
                                          "the oldest dropped"),
        "apply_bundles": rule(store_ok and fresh, "controller authority is not fresh"
                              if store_ok else "store unhealthy"),
    }


REPORT_INCIDENTS = 10  # the newest incidents a health report carries


def health_report(tree: dict[str, Any], incidents: Incidents, now: float) -> dict[str, Any]:
    """The readiness tree and the newest incidents as the controller gets them (``node.event``
    kind ``health``, :class:`~tether.protocol.health.NodeHealth`): each check's state and
    why, without the values that move on every sample (ages, depths, running counts), so a
    report changes only when the node's state does. Texts are clipped to the report's
    bounds; the result always passes ``NodeHealth.from_map``."""
    store = tree["store"]
    outbox_full = bool(store["outbox"]["full"])
    checks = {
        "transport": HealthCheck(tree["transport"]["ok"], tree["transport"]["state"],
                                 _detail(tree["transport"].get("detail"))),
        "control_authority": HealthCheck(tree["control_authority"]["ok"],
                                         tree["control_authority"]["state"]),
        "store": HealthCheck(store["ok"], store["state"], _detail(store.get("error"))),
        "outbox": HealthCheck(not outbox_full, "full" if outbox_full else "ok",
                              f"{store['outbox']['max']} frames at most"
                              if outbox_full else None),
        "executors": HealthCheck(tree["executors"]["ok"], tree["executors"]["state"]),
    }
    recent = list(incidents.items)[-REPORT_INCIDENTS:]
    report = NodeHealth(
        at_ms=int(now * 1000), ready=bool(tree["ready"]),
        reasons=tuple(clip(str(r), MAX_REASON_CHARS) for r in tree["reasons"][:MAX_REASONS]),
        checks=checks,
        incidents=tuple(HealthIncident(
            at_ms=max(0, int(i["at"] * 1000)), klass=clip(str(i["class"]), MAX_CLASS_CHARS),
            message=clip(str(i["message"]), MAX_MESSAGE_CHARS),
            close_code=_close_code(i.get("close_code"))) for i in recent),
        incidents_total=sum(incidents.counts.values()))
    return NodeHealth.from_map(report.to_map()).to_map()


def _detail(value: object) -> str | None:
    return None if value is None else clip(str(value), MAX_DETAIL_CHARS)


def _close_code(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) \
        and 0 <= value <= 65535 else None

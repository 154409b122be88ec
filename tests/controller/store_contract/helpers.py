"""Small builders for the contract suite: an enrolled node, a hello, an evt frame."""

from __future__ import annotations

import itertools
from typing import Any

from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.records import SessionOpened
from tether.protocol.frames import Body, CmdStatus, Frame, NodeEvent

_keys = itertools.count(1)


async def enrolled(store: ControllerStore, node_id: str = "n1", *,
                   key: bytes = b"k" * 32) -> str:
    token, _ = await store.create_join_token(ttl_s=60, uses=5, labels={"site": "a"},
                                             actor="admin")
    await store.enroll(join_token=token, node_id=node_id, public_key=key, labels={})
    return node_id


async def hello(store: ControllerStore, node_id: str = "n1", *, evt_epoch: int = 7,
                cmd_acked: int = 0, previous: str | None = None,
                labels: dict[str, str] | None = None) -> SessionOpened:
    return await store.open_session(
        node_id=node_id, remote="127.0.0.1", previous_session=previous, evt_epoch=evt_epoch,
        cmd_acked=cmd_acked, runtime={"state": "ready", "version": "1.0"},
        sidecar={"version": "s1"}, capabilities=["exec"], labels=labels or {})


def evt(q: int, body: Body | Any, *, k: str | None = None) -> tuple[Frame, Any]:
    """An evt frame at ``q`` carrying ``body`` (a typed body, or Poisoned)."""
    t = body.TYPE if isinstance(body, Body) else "node.event"
    return Frame(t=t, s="evt", q=q, id=f"f{q}", k=k), body


def status(command_id: str, state: str, **fields: Any) -> CmdStatus:
    return CmdStatus(command_id=command_id, state=state, **fields)


def event(kind: str = "e", **data: Any) -> NodeEvent:
    return NodeEvent(kind=kind, data=data)


def key() -> str:
    return f"k{next(_keys)}"

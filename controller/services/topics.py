"""The events published for commands, in one place: which topics, which kind, which data
(PROTOCOL.md §9 lists the topics a ``/ws`` client subscribes to)."""

from __future__ import annotations

from typing import Any

from ..store.records import LogChunk
from ..views import log_item
from .bus import EventBus


def command_changed(bus: EventBus, command_id: str, state: str, node_id: str) -> None:
    """A command moved to ``state``: pushed to ``command:<id>`` and ``commands:<node_id>``."""
    data = {"command_id": command_id, "node_id": node_id, "state": state}
    bus.publish(f"command:{command_id}", "command.updated", data)
    bus.publish(f"commands:{node_id}", "command.updated", data)


def command_expired(bus: EventBus, command_id: str) -> None:
    """A queued command ran out of time (the sweeper): pushed to ``command:<id>``."""
    bus.publish(f"command:{command_id}", "command.updated",
                {"command_id": command_id, "state": "expired"})


def log_appended(bus: EventBus, command_id: str, row: LogChunk) -> None:
    """A stored log chunk of ``command_id``: pushed to ``logs:<id>`` (sized by the hub)."""
    bus.publish(f"logs:{command_id}", "log.chunk", log_item(row))


def io_topic(node_id: str, command_id: str) -> str:
    """The bus topic of a command's io stream from its node (``io.output``, ``io.ack``).
    Internal: ``/ws`` refuses it (its prefixes are listed), only the io endpoint
    (api/io.py) subscribes. It names the node, so a node can only ever speak on the
    streams of its own commands."""
    return f"io:{node_id}:{command_id}"


def io_published(bus: EventBus, node_id: str, kind: str, data: dict[str, Any],
                 size: int) -> None:
    """An io frame from ``node_id`` (its ``command_id`` in ``data``), to the io topic."""
    bus.publish(io_topic(node_id, str(data["command_id"])), kind, data, size=size)

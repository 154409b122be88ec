"""The command service: submit, control, read and list commands (PROTOCOL.md §6, §8).

Rule 1 (nothing is lost): a command is written with its outbox row in one store transaction
*before* anyone is told; only then is the node's session nudged (:meth:`Router.nudge`) and
the change published. A nudge that reaches no session costs nothing: the next session
replays the outbox from its cursor.
Rule 2 (one truth): the store decides every transition (queued, cancelled, the 409s); this
service only orders the write, the nudge and the event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tether.protocol.errors import Conflict, NotFound

from ..store.records import CommandRecord, LogPage, NodeRecord
from .bus import EventBus
from .presence import Presence
from .router import Router
from .topics import command_changed

CONTROL_ACTIONS = ("cancel", "pause", "resume")


class CommandStore(Protocol):
    """The store methods this service uses (controller/store)."""

    async def submit_command(self, *, node_id: str, kind: str, args: dict[str, Any],
                             ttl_s: float | None, idem_key: str | None, actor: str,
                             max_frame: int = ...) -> tuple[CommandRecord, bool]: ...

    async def control_command(self, command_id: str, action: str, *,
                              actor: str) -> tuple[CommandRecord, bool]: ...

    async def get_command(self, command_id: str) -> CommandRecord: ...

    async def list_commands(self, *, node_id: str | None, state: str | None,
                            limit: int) -> tuple[list[CommandRecord], dict[str, int]]: ...

    async def command_logs(self, command_id: str, *, after: int = 0, limit: int = 1000,
                           max_bytes: int | None = None) -> LogPage: ...

    async def get_node(self, node_id: str) -> NodeRecord | None: ...


class CommandService:
    """``liveness(node_id)`` is the node's liveness now as this process sees it
    (services/liveness.py), and ``stored_liveness(row)`` as the store shows it (a node held
    by another replica is judged from its owner's touches: services/nodes.py), both for
    ``offline="fail"``; ``presence`` gives a live session's frame cap, and
    ``max_frame_bytes`` is the controller's, for a node with no session."""

    def __init__(self, store: CommandStore, router: Router, bus: EventBus, *,
                 presence: Presence, liveness: Callable[[str], str],
                 max_frame_bytes: int,
                 stored_liveness: Callable[[NodeRecord], str] | None = None) -> None:
        self._store = store
        self._router = router
        self._bus = bus
        self._presence = presence
        self._liveness = liveness
        self._stored_liveness = stored_liveness
        self._max_frame_bytes = max_frame_bytes

    async def submit(self, node_id: str, *, kind: str, args: dict[str, Any],
                     ttl_s: float | None, idem_key: str | None, actor: str,
                     offline: str = "queue") -> tuple[CommandRecord, bool]:
        """Queue a command (``kind`` and ``args`` already checked by ``command_args``).
        Returns (command, created): with a known ``idem_key`` the existing command, and
        nothing is written, nudged or published.

        Raises NotFound for a node not enrolled; Conflict ``node_offline`` when ``offline``
        is ``"fail"`` and the node is not online (nothing stored); CommandTooLarge (413)
        when its ``cmd.deliver`` frame would be over the node's frame cap: the session's
        when it has one, else the controller's (docs/protocol.md §6)."""
        if offline == "fail":
            liveness = self._liveness(node_id)
            if liveness != "online":
                row = await self._store.get_node(node_id)
                if row is None:  # an unknown node: 404
                    raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes "
                                   "list'")
                if self._stored_liveness is not None:  # held by another replica?
                    liveness = self._stored_liveness(row)
            if liveness != "online":
                raise Conflict(f"node {node_id!r} is {liveness}; not queued because "
                               "offline is 'fail'", code="node_offline")
        live = self._presence.snapshot(node_id)
        command, created = await self._store.submit_command(
            node_id=node_id, kind=kind, args=args, ttl_s=ttl_s, idem_key=idem_key,
            actor=actor,
            max_frame=live.max_frame if live is not None else self._max_frame_bytes)
        if created:
            self._router.nudge(node_id)
            command_changed(self._bus, command.command_id, command.state, node_id)
        return command, created

    async def control(self, command_id: str, action: str, *, actor: str
                      ) -> CommandRecord:
        """cancel, pause or resume a command; returns it. A command not yet sequenced is
        cancelled at once (published); otherwise a control command follows it on the
        node's stream (the node is nudged, and publishes the outcome itself).

        Raises ValueError for an unknown ``action``; NotFound; Conflict
        ``command_terminal`` / ``command_not_running`` / ``command_not_paused`` (409)."""
        if action not in CONTROL_ACTIONS:
            raise ValueError(f"unknown control action {action!r}")
        row, sent = await self._store.control_command(command_id, action, actor=actor)
        if sent:
            self._router.nudge(row.node_id)
        else:
            command_changed(self._bus, row.command_id, row.state, row.node_id)
        return row

    async def get(self, command_id: str) -> CommandRecord:
        """The command with its timeline. Raises NotFound."""
        return await self._store.get_command(command_id)

    async def list_commands(self, *, node_id: str | None, state: str | None, limit: int
                   ) -> tuple[list[CommandRecord], dict[str, int]]:
        """Newest first, at most ``limit``, and counts by state for the same filter."""
        return await self._store.list_commands(node_id=node_id, state=state, limit=limit)

    async def logs(self, command_id: str, *, after: int, limit: int,
                   max_bytes: int | None, must_exist: bool = True) -> LogPage:
        """A page of the command's output. Raises NotFound for an
        unknown command when ``must_exist`` (else its page is empty)."""
        if must_exist:
            await self._store.get_command(command_id)
        return await self._store.command_logs(command_id, after=after, limit=limit,
                                              max_bytes=max_bytes)

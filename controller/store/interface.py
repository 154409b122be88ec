"""The store's interface: what services may ask of the controller's state.

Services depend on :class:`Store`, never on an engine: ``ControllerStore`` implements it
over either SQL driver (``sqlite.py``, ``pg.py``), and tests/controller/store_contract runs
one suite against both. Results are frozen records (``records.py``).

Contract, for every implementation:

* Each method is one transaction: all of its effects or none. Writes return after their
  commit is durable.
* Fencing: ``apply_evt``, ``ack_cmd`` and ``note_cmd_sent`` apply only while the session
  named is the node's current one (``open_session`` makes it so and fences the previous
  one, which ``sessions`` then shows closed with 4409); otherwise they raise ``Fenced``.
* Commands follow ``domain/commands.py``; budgets ``quotas.py``; epochs are signed 64-bit
  (``domain/streams.py``).
* Reading is total: nothing stored makes a read raise (``records.py`` Rule 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tether.protocol.codec import MAX_FRAME_BYTES
from tether.protocol.frames import Body, Frame

from ..domain.roles import Caller
from .auth import AuditRecord, JoinTokenRecord, TokenRecord
from .quotas import Refusal, StoreQuotas
from .records import (
    CommandRecord,
    DeadLetter,
    LogChunk,
    LogPage,
    NodeEventRecord,
    NodeRecord,
    Poisoned,
    SessionOpened,
    SessionRecord,
    StatusEffect,
    Touch,
)


class Store(Protocol):
    """The controller's state (see the module's contract)."""

    quotas: StoreQuotas

    # -- health
    async def probe(self) -> tuple[float, float]: ...

    def write_stats(self) -> dict[str, int]: ...

    # -- meta and tokens
    async def controller_id(self) -> str: ...

    async def ensure_admin_token(self, have_file_token: str | None) -> str | None: ...

    async def operator_role(self, token: str) -> str | None: ...

    async def create_join_token(self, *, ttl_s: float, uses: int, labels: dict[str, str],
                                actor: str) -> tuple[str, float]: ...

    async def enroll(self, *, join_token: str, node_id: str, public_key: bytes,
                     labels: dict[str, str]) -> None: ...

    # -- nodes and sessions
    async def set_enabled(self, node_id: str, enabled: bool, *, actor: str) -> None: ...

    async def node_key(self, node_id: str) -> tuple[bytes, bool] | None: ...

    async def open_session(self, *, node_id: str, remote: str, previous_session: str | None,
                           evt_epoch: int, cmd_acked: int, runtime: dict[str, Any],
                           sidecar: dict[str, Any], capabilities: Sequence[str],
                           labels: dict[str, str], max_frame: int = MAX_FRAME_BYTES,
                           replica_id: str | None = None) -> SessionOpened: ...

    async def note_cmd_sent(self, node_id: str, session_id: str, epoch: int,
                            q: int) -> None: ...

    async def close_session(self, *, node_id: str, session_id: str, close_code: int | None,
                            reason: str, goodbye: bool) -> None: ...

    async def close_orphan_sessions(self, replica_id: str | None = None) -> int: ...

    async def touch_nodes(self, seen: dict[str, Touch]) -> None: ...

    async def list_nodes(self) -> list[NodeRecord]: ...

    async def get_node(self, node_id: str) -> NodeRecord | None: ...

    async def sessions(self, node_id: str, *, limit: int = 100) -> list[SessionRecord]: ...

    # -- downlink (cmd stream) and commands
    async def ack_cmd(self, node_id: str, session_id: str, epoch: int,
                      n: int) -> list[str]: ...

    async def downlink_after(self, node_id: str, epoch: int, after: int,
                             limit: int) -> list[tuple[int, bytes]]: ...

    async def downlink_pending(self) -> dict[str, tuple[int, int]]: ...

    async def submit_command(self, *, node_id: str, kind: str, args: dict[str, Any],
                             ttl_s: float | None, idem_key: str | None, actor: str,
                             max_frame: int = MAX_FRAME_BYTES
                             ) -> tuple[CommandRecord, bool]: ...

    async def control_command(self, command_id: str, action: str, *,
                              actor: str) -> tuple[CommandRecord, bool]: ...

    async def expire_due(self) -> list[str]: ...

    async def get_command(self, command_id: str) -> CommandRecord: ...

    async def list_commands(self, *, node_id: str | None, state: str | None,
                            limit: int) -> tuple[list[CommandRecord], dict[str, int]]: ...

    async def command_states(self, command_ids: Sequence[str]) -> dict[str, str]: ...

    # -- uplink (evt stream), dead letters, budgets
    async def apply_evt(self, *, node_id: str, session_id: str,
                        frames: Sequence[tuple[Frame, Body | Poisoned]],
                        on_commit: Callable[[], None] | None = None
                        ) -> list[StatusEffect]: ...

    async def dead_letters(self, node_id: str, *, limit: int = 100
                           ) -> tuple[list[DeadLetter], int]: ...

    async def dead_letters_total(self) -> int: ...

    async def prune_idempotency_keys(self, *, older_than_s: float = 2 * 86400) -> int: ...

    def node_event_refusal(self, kind: str, data: Any) -> Refusal | None: ...

    async def record_node_events(self, node_id: str, items: Sequence[tuple[str, Any]]
                                 ) -> list[Refusal | None]: ...

    async def node_usage(self, node_id: str | None = None) -> dict[str, dict[str, int]]: ...

    async def node_events(self, node_id: str, *,
                          limit: int = 100) -> list[NodeEventRecord]: ...

    async def count_node_events(self, node_id: str, kind: str) -> int: ...

    # -- logs (class C)
    async def append_logs(self, node_id: str,
                          chunks: Sequence[tuple[str | None, str, int, bytes, int]]
                          ) -> list[LogChunk]: ...

    async def node_logs(self, node_id: str, *, source: str | None, after: int = 0,
                        limit: int = 1000, max_bytes: int | None = None) -> LogPage: ...

    async def command_logs(self, command_id: str, *, after: int = 0, limit: int = 1000,
                           max_bytes: int | None = None) -> LogPage: ...

    # -- roles, tokens, audit, node removal (store/auth.py)
    async def operator_caller(self, token: str) -> tuple[Caller | None, str]: ...

    async def create_operator_token(self, *, role: str, name: str | None,
                                    ttl_s: float | None, actor: Caller
                                    ) -> tuple[str, TokenRecord]: ...

    async def list_operator_tokens(self) -> list[TokenRecord]: ...

    async def revoke_operator_token(self, token_id: str, *, actor: Caller) -> None: ...

    async def list_join_tokens(self) -> list[JoinTokenRecord]: ...

    async def revoke_join_token(self, token_id: str, *, actor: Caller) -> None: ...

    async def delete_node(self, node_id: str, *, actor: Caller) -> None: ...

    async def record_request(self, caller: Caller, action: str, target: str | None,
                             status: int) -> None: ...

    async def audit_page(self, *, before: int | None, limit: int) -> list[AuditRecord]: ...

    async def prune_audit(self, *, older_than_s: float | None,
                          keep_max: int | None) -> int: ...

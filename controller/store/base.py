"""What every part of the controller's store shares: the fence, text as engines hold it,
the timeline and audit rows, row locks, and :class:`StoreBase` (the driver and budgets).

The store's transactions are split by job: ``commands.py`` (the cmd stream and commands),
``budgets.py`` (node events within their budgets), ``logs.py`` (class C output), and
``controller_store.py`` (tokens, nodes, sessions, the evt stream), which puts them together.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any, Protocol

from tether.common.sqlitedb import Database
from tether.protocol.errors import TetherError
from tether.protocol.streams import MAX_EPOCH

from .quotas import StoreQuotas
from .sql import SqlDriver, Tx
from .sqlite import SqliteDriver


class Fenced(TetherError):
    """The session no longer owns its node: nothing it sent may be applied."""

    default_code = "superseded"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_epoch() -> int:
    return secrets.randbelow(MAX_EPOCH) + 1


def wall_now() -> float:
    return time.time()


def peer_text(value: str) -> str:
    """Peer text as every engine can hold it: NUL (which PostgreSQL's TEXT refuses) becomes
    U+FFFD, on every backend alike. JSON text needs nothing: it escapes NUL."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def opt_peer_text(value: str | None) -> str | None:
    return None if value is None else peer_text(value)


# Row locks, for PostgreSQL only: there, concurrent transactions (other replicas) meet, and
# the locks order them (a node, then its cmd cursor, then commands: one order, so no
# deadlock); SQLite's single writer already runs transactions one after the other.
FOR_UPDATE = {"sqlite": "", "postgres": " FOR UPDATE"}
_FENCE = {"sqlite": "SELECT current_session FROM nodes WHERE node_id=$1",
          # shared: one session's batches do not wait for each other, but a hello that
          # takes the node waits for them, and a batch after it sees its commit (Fenced)
          "postgres": "SELECT current_session FROM nodes WHERE node_id=$1 FOR SHARE"}


async def add_timeline(tx: Tx, command_id: str, state: str, at: float,
                       detail: str | None = None) -> None:
    await tx.execute("INSERT INTO command_events (command_id, state, at, detail) "
                     "VALUES ($1,$2,$3,$4)", command_id, state, at, detail)


async def add_audit(tx: Tx, actor: str, action: str, target: str | None,
                    detail: Any) -> None:
    await tx.execute("INSERT INTO audit_log (at, actor, action, target, detail) "
                     "VALUES ($1,$2,$3,$4,$5)", wall_now(), actor, action, target,
                     json.dumps(detail))


class CommandLatencySink(Protocol):
    """Where the store reports command transitions it committed (services/metrics.py
    ``CommandLatency``): seconds from submitted to delivered, and from delivered to a
    terminal status the node reported."""

    def delivered(self, seconds: float) -> None: ...

    def done(self, seconds: float) -> None: ...


# ("delivered" | "done", seconds), gathered in a transaction, reported once it committed
Latencies = list[tuple[str, float]]


class StoreBase:
    """The driver and the budgets every part of the store works with.

    ``driver`` is a :class:`SqlDriver`, or a SQLite :class:`Database` (wrapped in
    :class:`SqliteDriver`). Whoever built the driver opens and closes it."""

    def __init__(self, driver: SqlDriver | Database, *, quotas: StoreQuotas | None = None,
                 max_dead_letters_per_node: int = 1000,
                 command_latency: CommandLatencySink | None = None) -> None:
        self.driver: SqlDriver = (SqliteDriver(driver) if isinstance(driver, Database)
                                  else driver)
        # byte budgets per node and their overflow policies: store/quotas.py
        self.quotas = quotas or StoreQuotas()
        # Dead letters kept per node: the newest; older ones are deleted, and every one is
        # counted in nodes.dead_letters_total.
        self.max_dead_letters_per_node = max_dead_letters_per_node
        self.command_latency = command_latency

    def _observe(self, latencies: Sequence[tuple[str, float]]) -> None:
        """Report the transitions a committed transaction made (never before the commit: a
        transaction retried or rolled back must not be counted)."""
        sink = self.command_latency
        if sink is not None:
            for kind, seconds in latencies:
                (sink.delivered if kind == "delivered" else sink.done)(seconds)

    @staticmethod
    async def _fence(tx: Tx, node_id: str, session_id: str) -> None:
        """Fencing rule: raise :class:`Fenced` unless ``session_id`` is the node's
        current session."""
        if await tx.fetchval(_FENCE[tx.dialect], node_id) != session_id:
            raise Fenced(f"session {session_id} no longer owns node {node_id}")

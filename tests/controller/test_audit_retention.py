"""The audit log's retention is applied by the leader's sweeper, hourly (the store's half is
tests/controller/store_contract/test_auth.py, on every backend)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tether.controller.config import ControllerConfig
from tether.controller.services.sweeper import Sweeper
from tether.controller.store.records import Touch


@dataclass
class Store:
    pruned: list[tuple[float | None, int | None]] = field(default_factory=list)

    async def expire_due(self) -> list[str]:
        return []

    async def prune_idempotency_keys(self, *, older_than_s: float = 0) -> int:
        return 0

    async def prune_audit(self, *, older_than_s: float | None, keep_max: int | None) -> int:
        self.pruned.append((older_than_s, keep_max))
        return 1

    async def touch_nodes(self, seen: dict[str, Touch]) -> None:
        pass

    async def downlink_pending(self) -> dict[str, tuple[int, int]]:
        return {}


class Bus:
    def publish(self, topic: str, kind: str, data: Any, *, size: int | None = None) -> None:
        pass


def sweeper(store: Store, *, leader: bool, config: ControllerConfig) -> Sweeper:
    # one tick an hour: every tick is the hourly one
    return Sweeper(store, Bus(), [], expire_closed=lambda: [], sweep_interval_s=3600,
                   touch_interval_s=3600, downlink_check_s=3600, is_leader=lambda: leader,
                   audit_max_age_s=config.audit_max_age_s,
                   max_audit_records=config.audit_max_records)


async def test_the_leader_prunes_the_audit_log_hourly_with_the_configured_bounds() -> None:
    store = Store()
    await sweeper(store, leader=True, config=ControllerConfig(audit_max_age_days=2,
                                                              max_audit_records=50)).tick()
    assert store.pruned == [(2 * 86400, 50)]


async def test_a_replica_that_is_not_the_leader_prunes_nothing() -> None:
    store = Store()
    await sweeper(store, leader=False, config=ControllerConfig()).tick()
    assert store.pruned == []


async def test_by_default_the_audit_log_is_bounded_and_zero_turns_a_bound_off() -> None:
    default = ControllerConfig()
    assert default.audit_max_age_s == 400 * 86400
    assert default.audit_max_records == 1_000_000
    store = Store()
    await sweeper(store, leader=True, config=ControllerConfig(audit_max_age_days=0,
                                                              max_audit_records=0)).tick()
    assert store.pruned == []

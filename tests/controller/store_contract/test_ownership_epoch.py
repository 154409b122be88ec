"""The ownership epoch (both backends): every claim of a node at hello is one more than the
last, whichever replica claims it, and the fence follows the newest claim."""

from __future__ import annotations

import pytest

from tether.controller.store.controller_store import ControllerStore, Fenced

from .helpers import enrolled, event, evt, hello


async def test_each_hello_claims_the_node_in_the_next_ownership_epoch(
        store: ControllerStore) -> None:
    await enrolled(store)
    await enrolled(store, "n2")
    epochs = [(await hello(store)).owner_epoch for _ in range(3)]
    assert epochs == [1, 2, 3]
    assert (await hello(store, "n2")).owner_epoch == 1  # per node


async def test_a_session_of_an_older_ownership_epoch_cannot_write_for_the_node(
        store: ControllerStore) -> None:
    await enrolled(store)
    old = await hello(store)
    new = await hello(store)
    assert new.owner_epoch == old.owner_epoch + 1
    assert new.superseded_session == old.session_id
    with pytest.raises(Fenced):
        await store.apply_evt(node_id="n1", session_id=old.session_id,
                              frames=[evt(1, event("e", q=1))])
    await store.apply_evt(node_id="n1", session_id=new.session_id,
                          frames=[evt(1, event("e", q=1))])

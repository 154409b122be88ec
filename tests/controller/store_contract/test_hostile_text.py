"""Store contract: text a peer may send that an engine cannot hold as it is (NUL, which
PostgreSQL's TEXT refuses) is stored with U+FFFD in its place, the same on every backend,
and never fails the transaction that carries it."""

from __future__ import annotations

import pytest

from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.records import Poisoned
from tether.protocol.errors import NotFound

from .helpers import enrolled, event, evt, hello, status


async def test_nul_in_peer_text_is_stored_as_u_fffd_without_failing_the_batch(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    command, _ = await store.submit_command(node_id="n1", kind="exec",
                                           args={"argv": ["true"]}, ttl_s=None,
                                           idem_key=None, actor="admin")
    await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[
        evt(1, status(command.command_id, "failed", error="bad\x00exit")),
        evt(2, event("e\x00", v="a\x00b"), k="key\x00"),
        evt(3, Poisoned(reason="why\x00", excerpt="{\x00}")),
    ])
    failed = await store.get_command(command.command_id)
    assert failed.error == "bad\ufffdexit" and failed.timeline[-1].detail == "bad\ufffdexit"
    (stored,) = [e for e in await store.node_events("n1") if e.kind == "e\ufffd"]
    assert stored.data == {"v": "a\x00b"}  # JSON text escapes it: kept exactly
    (letter,), _ = await store.dead_letters("n1")
    assert (letter.reason, letter.excerpt) == ("why\ufffd", "{\ufffd}")
    await store.append_logs("n1", [(None, "app\x00", 1, b"\x00", 0)])
    (chunk,) = await store.node_logs("n1", source="app\ufffd")
    assert chunk.data == b"\x00"  # bytes are bytes
    await store.close_session(node_id="n1", session_id=opened.session_id, close_code=4400,
                              reason="r\x00", goodbye=False)
    assert (await store.sessions("n1"))[0].reason == "r\ufffd"


async def test_lookups_by_ids_with_nul_find_nothing_instead_of_failing(
        store: ControllerStore) -> None:
    await enrolled(store)
    assert await store.get_node("n1\x00") is None and await store.node_key("n1\x00") is None
    assert await store.sessions("n1\x00") == [] and await store.node_events("n1\x00") == []
    assert await store.dead_letters("n1\x00") == ([], 0)
    assert (await store.list_commands(node_id="n1\x00", state=None, limit=5)) == ([], {})
    assert len(await store.command_logs("c\x00")) == 0
    assert len(await store.node_logs("n1", source="\x00")) == 0
    for lookup in (store.get_command("c\x00"),
                   store.control_command("c\x00", "cancel", actor="admin"),
                   store.set_enabled("n\x00", False, actor="admin"),
                   store.submit_command(node_id="n\x00", kind="exec", args={}, ttl_s=None,
                                        idem_key="k\x00", actor="admin")):
        with pytest.raises(NotFound):
            await lookup

"""Issue 11 item 1 against a real controller: a key of small order authenticates nobody,
and an unauthenticated peer cannot tell an unknown node id from a bad signature."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tether.protocol.keys import P
from tether.protocol.signing import generate_private_key

from ..helpers import ControllerProc
from ..protocol.test_keys import SMALL, TORSION, encode
from .conftest import Edge, Identity, assert_error, b64url

Enroll = Callable[..., Awaitable[Identity]]
JoinToken = Callable[..., Awaitable[str]]

# The forged signatures of the attack: R a torsion point (canonical encoding), S = 0.
# For a small-order key one of them equals -[k]A, which OpenSSL alone accepts.
FORGED = sorted({encode(point) + bytes(32) for point in TORSION})


async def test_enrolling_the_all_zero_key_is_400_and_stores_nothing(
        anon: httpx.AsyncClient, api: httpx.AsyncClient, join_token: JoinToken) -> None:
    resp = await anon.post("/v1/edge/enroll", json={
        "join_token": await join_token(), "node_id": "zero-key",
        "public_key": b64url(bytes(32))})
    err = assert_error(resp, 400, "invalid_request")
    assert "small order" in err["message"]
    assert_error(await api.get("/api/v1/nodes/zero-key"), 404)


@pytest.mark.parametrize("key", [*SMALL, (P + 5).to_bytes(32, "little")],
                         ids=lambda k: k.hex()[:8] + ".." + k.hex()[-2:])
async def test_enrolling_any_small_order_or_non_canonical_key_is_400(
        anon: httpx.AsyncClient, join_token: JoinToken, key: bytes) -> None:
    token = await join_token()
    resp = await anon.post("/v1/edge/enroll", json={
        "join_token": token, "node_id": "weak", "public_key": b64url(key)})
    assert_error(resp, 400, "invalid_request")
    # the refused request did not consume the token's one use
    ok = await anon.post("/v1/edge/enroll", json={
        "join_token": token, "node_id": "weak",
        "public_key": Identity("weak", generate_private_key()).public_b64})
    assert ok.status_code == 201, ok.text


async def test_a_small_order_key_stored_by_an_older_version_is_refused_at_hello(
        controller: ControllerProc, edge: Edge, enroll: Enroll) -> None:
    """The full attack: the all-zero key in the store and every forged signature; none is
    welcomed (before the fix, one of them was)."""
    ident = await enroll()
    with sqlite3.connect(controller.data_dir / "controller.db", timeout=10) as db:
        db.execute("UPDATE nodes SET public_key=? WHERE node_id=?", (bytes(32), ident.node_id))
    for sig in FORGED:
        client = await edge.open()
        await client.send(client.hello(ident, sig=sig))
        closed = await client.expect_close()
        assert closed.code == 4401, sig.hex()
        assert closed.frames == []


async def test_an_unknown_id_and_a_bad_signature_get_byte_identical_closes(
        controller: ControllerProc, edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    unknown = await edge.open()
    await unknown.send(unknown.hello(Identity("never-enrolled", generate_private_key())))
    wrong_sig = await edge.open()
    await wrong_sig.send(wrong_sig.hello(Identity(ident.node_id, generate_private_key())))
    invalid_id = await edge.open()
    await invalid_id.send(invalid_id.hello(Identity("Not_Valid", generate_private_key())))
    a, b, c = (await unknown.expect_close(), await wrong_sig.expect_close(),
               await invalid_id.expect_close())
    assert (a.code, a.reason.encode()) == (b.code, b.reason.encode()) \
        == (c.code, c.reason.encode())
    assert a.code == 4401
    log = controller.log()
    assert "unknown node id" in log and "does not verify" in log

"""POST /v1/edge/enroll (PROTOCOL.md §8) against a real controller."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tether.protocol.signing import generate_private_key, public_key_raw

from .conftest import Edge, Identity, assert_error, b64url, eventually

JoinToken = Callable[..., Awaitable[str]]
Enroll = Callable[..., Awaitable[Identity]]


def new_key_b64() -> str:
    return b64url(public_key_raw(generate_private_key()))


async def enroll_raw(anon: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await anon.post("/v1/edge/enroll", json=body)


async def test_a_valid_enrollment_is_201_with_the_node_and_controller_ids(
        anon: httpx.AsyncClient, join_token: JoinToken, edge: Edge) -> None:
    ident = Identity("edge-01", generate_private_key())
    resp = await enroll_raw(anon, {"join_token": await join_token(), "node_id": "edge-01",
                                   "public_key": ident.public_b64, "labels": {"site": "a"}})
    assert resp.status_code == 201, resp.text
    health = (await anon.get("/api/v1/health")).json()
    assert resp.json() == {"node_id": "edge-01", "controller_id": health["controller_id"]}
    client = await edge.session(ident)
    assert client.welcome is not None


async def test_the_public_key_may_be_sent_with_base64_padding(
        anon: httpx.AsyncClient, join_token: JoinToken) -> None:
    key = new_key_b64() + "="
    resp = await enroll_raw(anon, {"join_token": await join_token(), "node_id": "padded",
                                   "public_key": key})
    assert resp.status_code == 201, resp.text


async def test_an_unknown_join_token_is_401(anon: httpx.AsyncClient) -> None:
    resp = await enroll_raw(anon, {"join_token": "join_nope", "node_id": "n1",
                                   "public_key": new_key_b64()})
    assert_error(resp, 401)


async def test_a_used_up_join_token_is_401(anon: httpx.AsyncClient,
                                           join_token: JoinToken) -> None:
    token = await join_token(uses=1)
    first = await enroll_raw(anon, {"join_token": token, "node_id": "first",
                                    "public_key": new_key_b64()})
    assert first.status_code == 201, first.text
    second = await enroll_raw(anon, {"join_token": token, "node_id": "second",
                                     "public_key": new_key_b64()})
    assert_error(second, 401)


async def test_a_join_token_with_two_uses_enrolls_two_nodes_then_is_401(
        anon: httpx.AsyncClient, join_token: JoinToken) -> None:
    token = await join_token(uses=2)
    for node_id in ("a-1", "a-2"):
        resp = await enroll_raw(anon, {"join_token": token, "node_id": node_id,
                                       "public_key": new_key_b64()})
        assert resp.status_code == 201, resp.text
    resp = await enroll_raw(anon, {"join_token": token, "node_id": "a-3",
                                   "public_key": new_key_b64()})
    assert_error(resp, 401)


async def test_an_expired_join_token_is_401(anon: httpx.AsyncClient,
                                            join_token: JoinToken, enroll: Enroll) -> None:
    """The API's shortest lifetime is 1 s. While the token is valid, enrolling an id that is
    taken by another key is a 409 that consumes nothing, so that probe tells exactly when the
    token expired without a blind sleep."""
    taken = await enroll("taken")
    created = time.monotonic()
    token = await join_token(ttl_s=1, uses=5)
    probe = {"join_token": token, "node_id": taken.node_id, "public_key": new_key_b64()}

    async def expired() -> httpx.Response | None:
        resp = await enroll_raw(anon, probe)
        if resp.status_code == 409:
            return None
        return resp

    resp = await eventually(expired, timeout_s=5, what="join token to expire")
    assert time.monotonic() - created >= 0.9
    assert_error(resp, 401)
    fresh = await enroll_raw(anon, {"join_token": token, "node_id": "late-node",
                                    "public_key": new_key_b64()})
    assert_error(fresh, 401)


async def test_a_bad_node_id_is_400(anon: httpx.AsyncClient, join_token: JoinToken) -> None:
    token = await join_token(uses=10)
    for node_id in ("Bad_ID", "-x", "a" * 64, "", "UPPER", "a.b", "a b", 7, None):
        resp = await enroll_raw(anon, {"join_token": token, "node_id": node_id,
                                       "public_key": new_key_b64()})
        assert_error(resp, 400, "invalid_request")
    # none of those used the token up
    resp = await enroll_raw(anon, {"join_token": token, "node_id": "a" * 63,
                                   "public_key": new_key_b64()})
    assert resp.status_code == 201, resp.text


async def test_a_node_id_with_a_trailing_newline_is_400(anon: httpx.AsyncClient,
                                                       join_token: JoinToken) -> None:
    """`[a-z0-9][a-z0-9-]{0,62}` is the whole id: "node-a\\n" does not match it."""
    resp = await enroll_raw(anon, {"join_token": await join_token(), "node_id": "node-a\n",
                                   "public_key": new_key_b64()})
    assert_error(resp, 400, "invalid_request")


async def test_a_public_key_that_is_not_32_bytes_is_400(anon: httpx.AsyncClient,
                                                        join_token: JoinToken) -> None:
    token = await join_token(uses=10)
    for key in (b64url(bytes(31)), b64url(bytes(33)), b64url(b""), "", 42, None):
        resp = await enroll_raw(anon, {"join_token": token, "node_id": "k-node",
                                       "public_key": key})
        assert_error(resp, 400, "invalid_request")


async def test_a_malformed_enroll_body_is_400(anon: httpx.AsyncClient) -> None:
    resp = await anon.post("/v1/edge/enroll", content=b"{oops",
                           headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_request")
    assert_error(await enroll_raw(anon, ["not", "an", "object"]), 400, "invalid_request")
    assert_error(await enroll_raw(anon, {"node_id": "n", "public_key": new_key_b64()}),
                 400, "invalid_request")
    assert_error(await enroll_raw(anon, {"join_token": "join_x", "node_id": "n",
                                         "public_key": new_key_b64(), "labels": ["a"]}),
                 400, "invalid_request")


async def test_the_same_node_id_with_another_key_is_409_and_uses_no_token(
        anon: httpx.AsyncClient, join_token: JoinToken, enroll: Enroll) -> None:
    await enroll("shared-id")
    token = await join_token(uses=1)
    resp = await enroll_raw(anon, {"join_token": token, "node_id": "shared-id",
                                   "public_key": new_key_b64()})
    assert_error(resp, 409)
    again = await enroll_raw(anon, {"join_token": token, "node_id": "other-id",
                                    "public_key": new_key_b64()})
    assert again.status_code == 201, again.text


async def test_re_enrolling_the_same_key_with_a_fresh_token_is_201(
        anon: httpx.AsyncClient, join_token: JoinToken, enroll: Enroll,
        edge: Edge) -> None:
    ident = await enroll("same-key")
    resp = await enroll_raw(anon, {"join_token": await join_token(), "node_id": "same-key",
                                   "public_key": ident.public_b64})
    assert resp.status_code == 201, resp.text
    client = await edge.session(ident)
    assert client.welcome is not None

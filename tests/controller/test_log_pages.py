"""REST log pages are bounded in bytes as well as in count (issue 11, item 3), and say
whether more follow (``more``), so a reader pages to the end however large the chunks.
A raw msgpack node against a real controller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tether.protocol.codec import encode_msgpack
from tether.protocol.frames import Frame

from .conftest import Edge, Identity, assert_error, eventually
from .test_edge_session import delivered_command, status

Enroll = Callable[..., Awaitable[Identity]]
CHUNK = 600_000  # two of these are over a page's default 1 MiB


def chunk(command_id: str | None, seq: int, data: bytes, source: str = "stdout") -> bytes:
    return encode_msgpack(Frame(t="log.chunk", b={
        "command_id": command_id, "source": source, "seq": seq, "data": data,
        "dropped": 0}), max_frame_bytes=1 << 30)


async def pages(api: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of ``path`` from the start, following ``next_after`` while ``more``."""
    out, after = [], 0
    while True:
        resp = await api.get(path, params={"after": str(after), **params})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out.append(page)
        if not page["more"]:
            return out
        assert page["items"], page  # a page that says more holds something
        after = page["next_after"]


def data_bytes(page: dict[str, Any]) -> int:
    return sum(len(i["data"]) for i in page["items"])


async def test_a_command_log_page_holds_at_most_a_mebibyte_and_says_when_more_follow(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    blobs = [bytes([97 + n]) * CHUNK for n in range(5)] + [b"tail\n"]
    for seq, blob in enumerate(blobs, 1):
        await client.send_raw(chunk(command_id, seq, blob))
    await client.send(status(1, command_id, "succeeded", exit_code=0))
    assert (await client.recv_type("edge.ack", timeout_s=30)).b["acks"] == {"evt": 1}

    got = await pages(api, f"/api/v1/commands/{command_id}/logs")
    assert all(data_bytes(p) <= 1 << 20 for p in got), [data_bytes(p) for p in got]
    assert [p["more"] for p in got] == [True] * (len(got) - 1) + [False]
    items = [i for p in got for i in p["items"]]
    assert [i["data"].encode() for i in items] == blobs  # every chunk, in order, once

    # a smaller page on request; a chunk larger than the page still comes, alone
    got = await pages(api, f"/api/v1/commands/{command_id}/logs", max_bytes="1000")
    assert [len(p["items"]) for p in got] == [1] * 6
    got = await pages(api, f"/api/v1/commands/{command_id}/logs", limit="4")
    assert [len(p["items"]) for p in got] == [1, 1, 1, 1, 2]
    for bad in ("0", "-1", str(1 << 40), "x"):
        resp = await api.get(f"/api/v1/commands/{command_id}/logs",
                             params={"max_bytes": bad})
        assert_error(resp, 400)


async def test_a_node_log_page_is_bounded_the_same_way(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    blobs = [bytes([65 + n]) * CHUNK for n in range(3)]
    for seq, blob in enumerate(blobs, 1):
        await client.send_raw(chunk(None, seq, blob, source="app"))

    async def stored() -> list[dict[str, Any]] | None:
        got = await pages(api, f"/api/v1/nodes/{ident.node_id}/logs")
        return got if sum(len(p["items"]) for p in got) == 3 else None
    got = await eventually(stored, what="the three chunks to be stored")
    assert len(got) == 3 and all(data_bytes(p) <= 1 << 20 for p in got)
    assert [i["data"].encode() for p in got for i in p["items"]] == blobs
    page = (await api.get(f"/api/v1/nodes/{ident.node_id}/logs",
                          params={"after": str(got[-1]["next_after"])})).json()
    assert page == {"items": [], "next_after": got[-1]["next_after"], "more": False}

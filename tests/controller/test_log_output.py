"""Command output through the controller (issue 11, item 9): a burst of log chunks is
stored whole (the gateway stops reading instead of dropping), and output that is not UTF-8
comes back byte-exact in JSON (``data_b64``, docs/protocol.md §6)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tether.controller.store.records import LogChunk
from tether.controller.views import log_item
from tether.protocol.codec import encode_batch, encode_msgpack
from tether.protocol.frames import Frame

from .conftest import Edge, Identity
from .test_edge_session import delivered_command, status

Enroll = Callable[..., Awaitable[Identity]]


def chunk(command_id: str, seq: int, data: bytes) -> bytes:
    return encode_msgpack(Frame(t="log.chunk", b={
        "command_id": command_id, "source": "stdout", "seq": seq, "data": data,
        "dropped": 0}))


async def all_logs(api: httpx.AsyncClient, command_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (await api.get(f"/api/v1/commands/{command_id}/logs",
                              params={"after": str(after)})).json()
        items += page["items"]
        if not page["items"]:
            return items
        after = page["next_after"]


async def test_a_burst_of_log_chunks_past_the_gateway_queue_is_stored_whole_and_in_order(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    seqs = range(1, 3073)  # three full batches: three times the gateway's 1024-chunk queue
    for start in range(0, len(seqs), 1024):
        await client.send_raw(encode_batch([chunk(command_id, q, f"line {q}\n".encode())
                                            for q in seqs[start:start + 1024]]))
    await client.send(status(1, command_id, "succeeded", exit_code=0))
    assert (await client.recv_type("edge.ack", timeout_s=30)).b["acks"] == {"evt": 1}
    items = await all_logs(api, command_id)
    assert [i["seq"] for i in items] == list(seqs)
    assert "".join(i["data"] for i in items) == "".join(f"line {q}\n" for q in seqs)
    cmd = (await api.get(f"/api/v1/commands/{command_id}")).json()
    assert cmd["log_dropped_bytes"] == 0


async def test_output_that_is_not_utf8_is_served_byte_exact_in_data_b64(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    pieces = [b"\xff\xfe\x00\xc3A\x80\x9f\xed\xa0\x80\n\xf0(\x8c\xbc\x01",  # 16 bad bytes
              b"caf\xc3", b"\xa9\n",  # a character split across two chunks
              b"plain\n"]
    for seq, data in enumerate(pieces, start=1):
        await client.send_raw(chunk(command_id, seq, data))
    await client.send(status(1, command_id, "succeeded", exit_code=0))
    await client.recv_type("edge.ack")
    items = await all_logs(api, command_id)
    assert [i.get("data_b64") is not None for i in items] == [True, True, True, False]
    exact = [base64.urlsafe_b64decode(i["data_b64"] + "=" * (-len(i["data_b64"]) % 4))
             if "data_b64" in i else i["data"].encode() for i in items]
    assert exact == pieces
    assert "=" not in items[0]["data_b64"]  # base64url without padding, as in §2


def test_log_item_keeps_valid_utf8_as_text_alone() -> None:
    item = log_item(LogChunk(id=7, command_id=None, source="stdout", seq=1,
                             data="é\n".encode(), dropped=0))
    assert item == {"id": 7, "source": "stdout", "seq": 1, "data": "é\n", "dropped": 0}


def test_log_item_adds_the_exact_bytes_when_they_are_not_utf8() -> None:
    item = log_item(LogChunk(id=7, command_id=None, source="stdout", seq=1,
                             data=b"\xff\x00", dropped=2))
    assert item["data"] == "\ufffd\x00"
    assert item["data_b64"] == "_wA"
    assert item["dropped"] == 2

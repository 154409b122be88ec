"""The node's log buffer under a reader that falls behind (issue 11, item 9): a command's
output waits for room instead of being dropped, room comes back only when the link took
the bytes, and app logs (which no one waits on) still drop their oldest."""

from __future__ import annotations

import asyncio

from tether.node.executors.exec import ExecRunner
from tether.node.logbuf import LogBuffer


async def settle() -> None:
    """Let every ready task run until each waits on something (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_command_output_waits_for_room_and_room_comes_back_when_the_link_took_it(
        ) -> None:
    logs = LogBuffer(max_bytes=10)
    await logs.put("c1", "stdout", b"0123456789")
    late = asyncio.create_task(logs.put("c1", "stdout", b"abc"))
    await settle()
    assert not late.done()  # no room: the producer waits, nothing is dropped
    assert [c.data for c in logs.take()] == [b"0123456789"]
    await settle()
    assert not late.done()  # in flight still holds its room
    logs.sent()
    await asyncio.wait_for(late, timeout=5)
    assert [(c.seq, c.data) for c in logs.take()] == [(2, b"abc")]
    assert logs.dropped_total == 0


async def test_chunks_the_link_did_not_take_go_back_in_front_in_order() -> None:
    logs = LogBuffer(max_bytes=100)
    await logs.put("c1", "stdout", b"one\n")
    first = logs.take()
    await logs.put("c1", "stdout", b"two\n")
    logs.requeue()  # the session went away mid-send
    assert [(c.seq, c.data) for c in logs.take()] == [(1, b"one\n"), (2, b"two\n")]
    assert first[0].seq == 1


def test_app_logs_drop_their_oldest_in_count_and_bytes_and_never_a_commands_output(
        ) -> None:
    async def main() -> None:
        logs = LogBuffer(max_chunks=3, max_drop_bytes=8, max_bytes=1 << 20)
        await logs.put("c1", "stdout", b"kept\n")
        for i in range(5):
            logs.add(None, "sensor", f"{i}\n".encode())  # 2 bytes each
        logs.add(None, "sensor", b"123456")  # 6 bytes: only one 2-byte chunk fits beside it
        chunks = logs.take()
        assert [(c.command_id, c.data) for c in chunks] == [
            ("c1", b"kept\n"), (None, b"4\n"), (None, b"123456")]
        assert chunks[0].dropped == 4 and logs.dropped_total == 4

    asyncio.run(main())


async def test_a_runner_whose_reader_falls_behind_loses_no_byte_of_a_large_output() -> None:
    logs = LogBuffer(max_bytes=4096, max_chunks=2, max_chunk_bytes=1024)  # many pieces a read
    got = bytearray()
    woken = asyncio.Event()
    runner = ExecRunner("c1", {"argv": ["seq", "1", "100000"]}, logs=logs,
                        on_output=woken.set)

    async def slow_link() -> None:  # takes what is buffered only when woken, one batch
        while True:
            await woken.wait()
            woken.clear()
            for chunk in logs.take():
                got.extend(chunk.data)
            logs.sent()

    link = asyncio.create_task(slow_link())
    try:
        outcome = await asyncio.wait_for(runner.run(), timeout=60)
    finally:
        link.cancel()
    for chunk in logs.take():
        got.extend(chunk.data)
    assert outcome.state == "succeeded"
    assert got == b"".join(f"{i}\n".encode() for i in range(1, 100001))
    assert outcome.result == {"stdout_bytes": len(got), "stderr_bytes": 0}
    assert logs.dropped_total == 0


async def test_a_delivery_of_two_pieces_wakes_the_link_for_the_first_before_waiting_for_room(
        ) -> None:
    """The interleaving of the one hang seen in CI, driven step by step: output of more
    than one piece, whose first piece itself had to wait for room. The first piece goes in
    once room came back, the second finds no room; the link, which takes only when woken,
    must have been woken after the first went in, or both sides wait for ever."""
    logs = LogBuffer(max_bytes=10, max_chunk_bytes=8)
    woken = asyncio.Event()
    runner = ExecRunner("c1", {"argv": ["true"]}, logs=logs, on_output=woken.set)
    await logs.put("c1", "stdout", b"earlier!")  # 8 of 10 bytes: the next piece waits
    deliver = asyncio.create_task(runner._deliver("stdout", b"A" * 8 + b"B" * 8))
    got: list[bytes] = []
    for _ in range(4):  # a link that takes what is buffered only when woken
        await settle()
        if deliver.done() or not woken.is_set():
            break
        woken.clear()
        got.extend(chunk.data for chunk in logs.take())
        logs.sent()
    await settle()
    assert deliver.done(), "the producer waits for room that only a wake-up could bring"
    got.extend(chunk.data for chunk in logs.take())
    assert got == [b"earlier!", b"A" * 8, b"B" * 8]

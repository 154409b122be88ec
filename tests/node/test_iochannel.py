"""node/iochannel.py: the node's end of an io stream, with a fake link and a fake clock:
input applied in order once, bounded by its window; output waits for the peer's window;
keepalives, re-sends and the lease."""

from __future__ import annotations

import asyncio

from tether.node.iochannel import IoChannel
from tether.protocol.frames import MAX_IO_DATA, Frame, IoAck, IoInput, IoOutput

from ..helpers import until


class Link:
    def __init__(self) -> None:
        self.sent: list[Frame] = []

    async def send(self, frame: Frame) -> bool:
        self.sent.append(frame)
        return True

    def acks(self) -> list[int]:
        return [f.b["seq"] for f in self.sent if f.t == "io.ack"]




def inp(seq: int, data: bytes = b"x", eof: bool = False) -> IoInput:
    return IoInput(command_id="c-1", seq=seq, data=data, eof=eof)


async def test_input_is_applied_in_order_once_and_gaps_and_duplicates_are_acked_again() -> None:
    link = Link()
    io = IoChannel("c-1", link.send, window=100)
    await io.receive(inp(2))  # a gap: dropped, the cursor acked
    await io.receive(inp(1, b"a"))
    await io.receive(inp(1, b"a"))  # a duplicate
    await io.receive(inp(2, b"b", eof=True))
    assert link.acks() == [0, 0]
    got = [await io.next_input(), await io.next_input()]
    assert [(i.seq, i.data, i.eof) for i in got] == [(1, b"a", False), (2, b"b", True)]
    await io.applied(2)
    assert link.acks()[-1] == 2
    assert io.dropped_total == 1  # the gap (a duplicate is not a loss)


async def test_input_past_the_window_is_dropped_for_the_sender_to_resend() -> None:
    link = Link()
    io = IoChannel("c-1", link.send, window=10)
    await io.receive(inp(1, b"x" * 11))
    await io.receive(inp(2, b"y" * MAX_IO_DATA))  # 11 + 64 KiB: past window + one frame
    assert io.in_accepted == 1
    assert link.acks() == [0]


async def test_output_waits_for_the_peers_window_and_is_resent_when_acks_stall() -> None:
    link = Link()
    now = [0.0]
    io = IoChannel("c-1", link.send, clock=lambda: now[0])
    writer = asyncio.create_task(io.write_output(b"prompt$ "))
    await asyncio.sleep(0)
    assert not [f for f in link.sent if f.t == "io.output"]  # no window until the first ack
    await io.receive(IoAck(command_id="c-1", seq=0, window=4))
    await asyncio.sleep(0)
    outs = [IoOutput.parse(f) for f in link.sent if f.t == "io.output"]
    assert [(o.seq, o.data) for o in outs] == [(1, b"prom")]
    await io.receive(IoAck(command_id="c-1", seq=1, window=4))
    await asyncio.wait_for(writer, 1)
    outs = [IoOutput.parse(f) for f in link.sent if f.t == "io.output"]
    assert [(o.seq, o.data) for o in outs] == [(1, b"prom"), (2, b"pt$ ")]
    assert io.out.due(now[0] + 2.0)  # seq 2 unacked: the ticker re-sends it


async def test_an_ack_beyond_what_was_sent_is_ignored_and_a_hello_is_answered_once() -> None:
    link = Link()
    now = [10.0]
    io = IoChannel("c-1", link.send, clock=lambda: now[0])
    await io.receive(IoAck(command_id="c-1", seq=5, window=100))
    assert io.out.acked == 0 and io.dropped_total == 1
    await io.receive(IoAck(command_id="c-1", seq=0, window=100))  # a hello: answered
    await io.receive(IoAck(command_id="c-1", seq=0, window=100))  # again at once: not
    assert link.acks() == [0]
    now[0] += 1.0
    await io.receive(IoAck(command_id="c-1", seq=0, window=100))
    assert link.acks() == [0, 0]


async def test_the_lease_runs_out_once_when_the_controller_side_goes_silent() -> None:
    link = Link()
    now = [0.0]
    lost: list[bool] = []
    io = IoChannel("c-1", link.send, clock=lambda: now[0], lease_s=60, keepalive_s=10)
    io.on_lease_lost = lambda: lost.append(True)
    task = asyncio.create_task(io.run())
    try:
        await until(lambda: len(link.acks()) == 1)  # the window, announced at start
        now[0] = 30.0  # a keepalive is due, the lease is not over
        await until(lambda: len(link.acks()) >= 2)
        assert not lost
        now[0] = 60.0
        await until(lambda: bool(lost))
        now[0] = 200.0
        await until(lambda: len(link.acks()) >= 4)  # keepalives go on, the lease is lost once
        assert lost == [True]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

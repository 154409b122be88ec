"""Store contract: the command transitions the store commits are reported to its
``command_latency`` sink once each (queued→delivered by the node's ack or implied by a
status; delivered→done by a terminal status), after the commit (every backend)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.controller.store.controller_store import ControllerStore

from .helpers import enrolled, evt, hello, status
from .test_commands import submit


@dataclass
class Sink:
    delivered_s: list[float] = field(default_factory=list)
    done_s: list[float] = field(default_factory=list)

    def delivered(self, seconds: float) -> None:
        self.delivered_s.append(seconds)

    def done(self, seconds: float) -> None:
        self.done_s.append(seconds)


async def test_each_transition_is_reported_once_whether_acked_or_implied(
        store: ControllerStore) -> None:
    sink = Sink()
    store.command_latency = sink
    await enrolled(store)
    acked, _ = await submit(store)
    implied, _ = await submit(store)
    opened = await hello(store)
    await store.note_cmd_sent("n1", opened.session_id, opened.cmd_epoch, 2)
    await store.ack_cmd("n1", opened.session_id, opened.cmd_epoch, 1)
    await store.ack_cmd("n1", opened.session_id, opened.cmd_epoch, 1)  # again: nothing new
    assert len(sink.delivered_s) == 1 and sink.done_s == []

    await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[
        evt(1, status(acked.command_id, "running")),
        evt(2, status(acked.command_id, "succeeded", exit_code=0)),
        evt(3, status(implied.command_id, "failed", exit_code=1)),  # never acked
        evt(4, status(acked.command_id, "failed", exit_code=1)),  # terminal already
    ])
    assert len(sink.delivered_s) == 2  # the second, implied by its status
    assert len(sink.done_s) == 2
    assert all(0 <= s < 60 for s in sink.delivered_s + sink.done_s)
    await store.ack_cmd("n1", opened.session_id, opened.cmd_epoch, 2)  # after its status
    assert len(sink.delivered_s) == 2


async def test_a_store_without_a_sink_reports_nothing_and_still_applies(
        store: ControllerStore) -> None:
    await enrolled(store)
    command, _ = await submit(store)
    opened = await hello(store)
    await store.apply_evt(node_id="n1", session_id=opened.session_id,
                          frames=[evt(1, status(command.command_id, "succeeded"))])
    assert (await store.get_command(command.command_id)).state == "succeeded"

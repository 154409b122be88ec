"""The history checker (tools/soak/checker.py) and its record format (tools/soak/history.py).

Pure: histories are written here record by record. Each violation kind has a history that
must produce it; the histories that must pass include the tricky legal ones (a duplicate
delivery applied once, a replay after an epoch bump, a gap later repaired).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.tools.soak.checker import VIOLATION_KINDS, Violation, check
from tether.tools.soak.history import (
    Acked,
    Append,
    Applied,
    Claimed,
    CmdState,
    CmdSubmit,
    Drained,
    Duplicate,
    Effect,
    EpochStart,
    Fenced,
    Gap,
    HistoryError,
    HistoryWriter,
    Marker,
    OwnershipLost,
    Pending,
    Record,
    Recovered,
    Sent,
    load,
    parse_lines,
    stream,
    to_json,
)

N = "n-1"


def evt_frames(count: int, epoch: int = 7, session: str = "s1", replica: str = "r1",
               prefix: str = "f") -> list[Record]:
    """The happy path for ``count`` evt frames: appended, sent, applied, acked."""
    records: list[Record] = []
    for q in range(1, count + 1):
        records += [Append(N, "evt", f"{prefix}{q}", epoch, q),
                    Sent(N, "evt", epoch, q, session)]
    for q in range(1, count + 1):
        records.append(Applied(N, "evt", epoch, q, session, replica))
    records.append(Acked(N, "evt", epoch, count, session))
    return records


def command(command_id: str, *states: str, markers: int = 1) -> list[Record]:
    records: list[Record] = [CmdSubmit(command_id, N)]
    records += [CmdState(command_id, state) for state in states]
    records += [Marker(command_id) for _ in range(markers)]
    return records


def kinds(violations: list[Violation]) -> list[str]:
    return [v.kind for v in violations]


# -- histories that must pass ------------------------------------------------------------


def test_an_empty_history_keeps_every_promise() -> None:
    assert check([]) == []


def test_frames_applied_once_in_order_and_acked_pass() -> None:
    assert check([*evt_frames(5), Drained()]) == []


def test_a_duplicate_delivery_that_is_applied_once_passes() -> None:
    history = [
        *evt_frames(3),
        Sent(N, "evt", 7, 3, "s2"),             # re-sent after a reconnect: the ack was lost
        Duplicate(N, "evt", 7, 3, "s2"),        # the receiver acks it again, applies nothing
        Acked(N, "evt", 7, 3, "s2"),
    ]
    assert check(history) == []


def test_a_replay_after_an_epoch_bump_applied_once_passes() -> None:
    # f3 was applied in epoch 7 but its ack was lost; the sender starts epoch 8 and
    # re-sequences f3, f4 from 1. The receiver skips f3 by its idempotency key (the cursor
    # still moves) and applies f4.
    history: list[Record] = [
        *[Append(N, "evt", f"f{q}", 7, q) for q in (1, 2, 3, 4)],
        *[Applied(N, "evt", 7, q, "s1", "r1") for q in (1, 2, 3)],
        Acked(N, "evt", 7, 2, "s1"),
        EpochStart(N, "evt", 8),
        Append(N, "evt", "f3", 8, 1), Append(N, "evt", "f4", 8, 2),
        Duplicate(N, "evt", 8, 1, "s2"),
        Applied(N, "evt", 8, 2, "s2", "r1"),
        Acked(N, "evt", 8, 2, "s2"),
        Drained(),
    ]
    assert check(history) == []


def test_a_gap_later_repaired_passes() -> None:
    history: list[Record] = [
        *[Append(N, "cmd", f"c{q}", 3, q) for q in (1, 2, 3)],
        Applied(N, "cmd", 3, 1, "s1"),
        Gap(N, "cmd", 3, q=3, applied=1),       # q=2 went missing on the way
        Applied(N, "cmd", 3, 2, "s2"),          # re-sent from the cursor at the next hello
        Applied(N, "cmd", 3, 3, "s2"),
        Acked(N, "cmd", 3, 3, "s2"),
    ]
    assert check(history) == []


def test_a_gap_repaired_by_a_frame_skipped_for_its_idempotency_key_passes() -> None:
    # Found by the link model below: after an epoch bump, q=1 (applied in the old epoch)
    # arrives after q=2; the gap closes when q=1 is skipped by its key, not applied.
    history: list[Record] = [
        Append(N, "evt", "f1", 1, 1), Applied(N, "evt", 1, 1, "s1"),
        Append(N, "evt", "f2", 1, 2),
        EpochStart(N, "evt", 2),
        Append(N, "evt", "f1", 2, 1), Append(N, "evt", "f2", 2, 2),
        Gap(N, "evt", 2, q=2, applied=0),
        Duplicate(N, "evt", 2, 1, "s3"), Applied(N, "evt", 2, 2, "s3"),
        Acked(N, "evt", 2, 2), Drained(),
    ]
    assert check(history) == []


def test_an_audit_that_finds_each_effect_once_passes() -> None:
    history = [*evt_frames(2), Effect(N, "evt", "f1", 1), Effect(N, "evt", "f2", 1)]
    assert check(history) == []


def test_a_takeover_by_another_replica_passes_when_only_the_owner_applies() -> None:
    history: list[Record] = [
        Claimed(N, "r1", "s1"),
        Append(N, "evt", "f1", 7, 1), Applied(N, "evt", 7, 1, "s1", "r1"),
        Claimed(N, "r2", "s2"),
        Append(N, "evt", "f2", 7, 2), Applied(N, "evt", 7, 2, "s2", "r2"),
        Acked(N, "evt", 7, 2, "s2"),
    ]
    assert check(history) == []


def test_applies_committed_by_a_process_killed_before_recording_them_are_recovered() -> None:
    # the runtime committed c2 and was killed before its `applied`; the store it reopens
    # says its cursor is at 2, and the controller reads the ack of c2 from the next hello
    history: list[Record] = [
        Append(N, "cmd", "c1", 3, 1), Applied(N, "cmd", 3, 1, "s1"),
        Append(N, "cmd", "c2", 3, 2), Recovered(N, "cmd", 3, 2),
        Acked(N, "cmd", 3, 2), Append(N, "cmd", "c3", 3, 3), Applied(N, "cmd", 3, 3, "s2"),
        Acked(N, "cmd", 3, 3)]
    assert check(history) == []
    without = [r for r in history if not isinstance(r, Recovered)]
    assert sorted(kinds(check(without))) == ["lost_acked", "out_of_order"]


def test_a_late_record_of_a_recovered_apply_confirms_it() -> None:
    # replica r1 committed f2 and recorded it after r2's claim had read the cursor
    history: list[Record] = [
        Claimed(N, "r1", "s1"), Append(N, "evt", "f1", 7, 1), Append(N, "evt", "f2", 7, 2),
        Applied(N, "evt", 7, 1, "s1", "r1"), Claimed(N, "r2", "s2"),
        Recovered(N, "evt", 7, 2), Applied(N, "evt", 7, 2, "s1", "r1"),
        Acked(N, "evt", 7, 2)]
    assert check(history) == []


def test_a_frame_the_sender_found_unrecorded_in_its_store_is_appended_once() -> None:
    # killed between the outbox COMMIT and its `append`: the reopened store names it; a
    # slot already named keeps its first id (a re-sequenced frame's)
    history: list[Record] = [
        Append(N, "evt", "f1", 7, 1), Pending(N, "evt", "7.1", 7, 1),
        Pending(N, "evt", "7.2", 7, 2), Applied(N, "evt", 7, 1, "s1"),
        Applied(N, "evt", 7, 2, "s1"), Acked(N, "evt", 7, 2)]
    assert check(history) == []
    without = [r for r in history if not isinstance(r, Pending)]
    assert sorted(kinds(check(without))) == ["ack_unknown_frame", "unknown_frame"]


def test_commands_terminal_and_run_at_most_once_pass() -> None:
    history = (command("a", "queued", "delivered", "running", "succeeded")
               + command("b", "queued", "delivered", "running", "failed", markers=0)
               + command("c", "queued", "expired", markers=0)
               + command("d", "running", "paused", "running", "cancelled", markers=1))
    assert check(history) == []


def test_a_late_status_that_repeats_the_terminal_state_passes() -> None:
    assert check(command("a", "running", "succeeded", "succeeded")) == []


def test_unacked_frames_lost_with_the_senders_store_are_exempt_after_drain() -> None:
    history: list[Record] = [
        Append(N, "evt", "f1", 7, 1), Applied(N, "evt", 7, 1, "s1"), Acked(N, "evt", 7, 1),
        Append(N, "evt", "f2", 7, 2),           # never sent: the node's disk died
        EpochStart(N, "evt", 9, reason="sender_store_lost"),
        Drained(),
    ]
    assert check(history) == []


# -- histories that must fail, one per kind ------------------------------------------------


def test_an_acked_frame_never_applied_is_lost() -> None:
    history = [Append(N, "evt", "f1", 7, 1), Acked(N, "evt", 7, 1)]
    assert check(history) == [Violation("lost_acked", N, "evt", None,
                                        "f1 was acked but its effect is absent")]


def test_an_acked_frame_whose_effect_is_missing_from_the_audit_is_lost() -> None:
    # Applied (as the receiver said), yet the final audit cannot find f2: the apply's
    # effect did not survive (a commit that was not durable, say).
    history = [*evt_frames(2), Effect(N, "evt", "f1", 1)]
    assert kinds(check(history)) == ["lost_acked"]


def test_a_frame_applied_twice_within_an_epoch_is_a_duplicate_apply() -> None:
    history = [*evt_frames(2), Applied(N, "evt", 7, 2, "s2", "r1")]
    violations = check(history)
    assert kinds(violations) == ["duplicate_apply"]
    assert (violations[0].node, violations[0].stream, violations[0].seq) == (N, "evt", 2)


def test_a_replay_after_an_epoch_bump_applied_again_is_a_duplicate_apply() -> None:
    history: list[Record] = [
        *[Append(N, "evt", f"f{q}", 7, q) for q in (1, 2)],
        *[Applied(N, "evt", 7, q, "s1") for q in (1, 2)],
        Acked(N, "evt", 7, 1),
        EpochStart(N, "evt", 8),
        Append(N, "evt", "f2", 8, 1),
        Applied(N, "evt", 8, 1, "s2"),           # f2 again, under its new sequence
    ]
    violations = check(history)
    assert kinds(violations) == ["duplicate_apply"]
    assert "f2 applied a second time" in violations[0].detail


def test_an_audit_that_finds_an_effect_twice_is_a_duplicate_effect() -> None:
    history = [*evt_frames(1), Effect(N, "evt", "f1", 2)]
    assert kinds(check(history)) == ["duplicate_effect"]


def test_applying_past_a_gap_is_out_of_order() -> None:
    history: list[Record] = [*[Append(N, "cmd", f"c{q}", 3, q) for q in (1, 2, 3)],
                             Applied(N, "cmd", 3, 1, "s1"), Applied(N, "cmd", 3, 3, "s1")]
    violations = check(history)
    assert kinds(violations) == ["out_of_order"]
    assert violations[0].seq == 3


def test_a_resequenced_epoch_that_swaps_two_frames_is_out_of_order() -> None:
    history: list[Record] = [
        Append(N, "evt", "f1", 7, 1), Append(N, "evt", "f2", 7, 2),
        EpochStart(N, "evt", 8),
        Append(N, "evt", "f2", 8, 1), Append(N, "evt", "f1", 8, 2),   # the wrong order
        Applied(N, "evt", 8, 1, "s2"), Applied(N, "evt", 8, 2, "s2"),
    ]
    violations = check(history)
    assert kinds(violations) == ["out_of_order"]
    assert "f1 applied after f2" in violations[0].detail


def test_an_apply_from_the_old_epoch_after_a_new_one_began_is_stale() -> None:
    history: list[Record] = [Append(N, "evt", "f1", 7, 1), EpochStart(N, "evt", 8),
                             Applied(N, "evt", 7, 1, "s1")]
    assert kinds(check(history)) == ["stale_epoch_apply"]


def test_a_receiver_applying_another_frame_than_the_one_at_that_sequence_misapplies() -> None:
    history: list[Record] = [Append(N, "cmd", "c1", 3, 1), Append(N, "cmd", "c2", 3, 2),
                             Applied(N, "cmd", 3, 1, "s1", frame_id="c1"),
                             Applied(N, "cmd", 3, 2, "s1", frame_id="c1")]
    assert "misapplied" in kinds(check(history))


def test_a_gap_never_repaired_is_reported() -> None:
    history: list[Record] = [*[Append(N, "cmd", f"c{q}", 3, q) for q in (1, 2, 3)],
                             Applied(N, "cmd", 3, 1, "s1"), Gap(N, "cmd", 3, q=3, applied=1)]
    violations = check(history)
    assert kinds(violations) == ["unrepaired_gap"]
    assert violations[0].seq == 2


def test_a_gap_is_repaired_by_a_new_epoch() -> None:
    history: list[Record] = [*[Append(N, "cmd", f"c{q}", 3, q) for q in (1, 2, 3)],
                             Applied(N, "cmd", 3, 1, "s1"), Gap(N, "cmd", 3, q=3, applied=1),
                             EpochStart(N, "cmd", 4)]
    assert check(history) == []


def test_a_frame_never_applied_by_the_end_of_a_drained_soak_is_undelivered() -> None:
    history = [*evt_frames(1), Append(N, "evt", "f2", 7, 2), Drained()]
    assert kinds(check(history)) == ["undelivered"]


def test_the_same_unapplied_frame_is_not_reported_without_a_drain() -> None:
    assert check([*evt_frames(1), Append(N, "evt", "f2", 7, 2)]) == []


def test_a_frame_appended_after_the_drain_is_not_held_to_it() -> None:
    # a node runs on until the end: a health report it queued after the drain may never go
    assert check([*evt_frames(1), Drained(), Append(N, "evt", "f2", 7, 2)]) == []


def test_an_apply_from_a_fenced_connection_is_reported() -> None:
    history: list[Record] = [Append(N, "evt", "f1", 7, 1), Fenced(N, "s1"),
                             Applied(N, "evt", 7, 1, "s1")]
    assert kinds(check(history)) == ["apply_from_fenced"]


def test_a_claim_by_a_new_session_fences_the_old_one_even_on_the_same_replica() -> None:
    history: list[Record] = [Claimed(N, "r1", "s1"), Claimed(N, "r1", "s2"),
                             Append(N, "evt", "f1", 7, 1), Applied(N, "evt", 7, 1, "s1", "r1")]
    assert kinds(check(history)) == ["apply_from_fenced"]


def test_a_node_committing_a_cmd_batch_after_its_session_closed_is_no_fencing_violation(
        ) -> None:
    # the sidecar died with the batch read: the controller closed s1, the node applied
    # what it had read (in cursor order, once), under the session it still knew
    history: list[Record] = [Claimed(N, "r1", "s1"), Append(N, "cmd", "c1", 3, 1),
                             Fenced(N, "s1", "r1"), Applied(N, "cmd", 3, 1, "s1")]
    assert check(history) == []


def test_an_apply_by_a_replica_that_lost_ownership_is_reported() -> None:
    history: list[Record] = [Claimed(N, "r1", "s1"), OwnershipLost(N, "r1"),
                             Append(N, "evt", "f1", 7, 1), Applied(N, "evt", 7, 1, "s1", "r1")]
    assert kinds(check(history)) == ["apply_without_ownership"]


def test_an_apply_by_the_old_owner_after_a_takeover_is_reported() -> None:
    history: list[Record] = [Claimed(N, "r1", "s1"), Claimed(N, "r2", "s2"),
                             Append(N, "evt", "f1", 7, 1), Applied(N, "evt", 7, 1, "s2", "r1")]
    assert kinds(check(history)) == ["apply_without_ownership"]


def test_a_recovered_cursor_does_not_hide_a_second_apply() -> None:
    history: list[Record] = [
        Append(N, "cmd", "c1", 3, 1), Recovered(N, "cmd", 3, 1),
        Applied(N, "cmd", 3, 1, "s1"), Applied(N, "cmd", 3, 1, "s2")]
    assert kinds(check(history)) == ["duplicate_apply"]


def test_a_recovered_cursor_of_an_older_epoch_recovers_nothing() -> None:
    history: list[Record] = [
        Append(N, "cmd", "c1", 3, 1), EpochStart(N, "cmd", 4), Recovered(N, "cmd", 3, 1),
        Acked(N, "cmd", 3, 1)]
    assert kinds(check(history)) == ["lost_acked"]


def test_a_command_left_running_is_not_terminal() -> None:
    assert kinds(check(command("a", "queued", "running", markers=0))) == [
        "command_not_terminal"]


def test_a_command_never_seen_in_any_state_is_not_terminal() -> None:
    assert kinds(check([CmdSubmit("a", N)])) == ["command_not_terminal"]


def test_a_terminal_state_that_changes_is_reported() -> None:
    violations = check(command("a", "running", "failed", "succeeded"))
    assert kinds(violations) == ["terminal_state_changed"]
    assert "from failed to succeeded" in violations[0].detail


def test_a_state_that_goes_back_is_reported() -> None:
    assert kinds(check(command("a", "running", "delivered", "succeeded"))) == [
        "state_regressed"]


def test_a_command_that_ran_twice_is_reported() -> None:
    assert kinds(check(command("a", "running", "succeeded", markers=2))) == ["executed_twice"]


def test_a_success_without_its_marker_is_reported() -> None:
    assert kinds(check(command("a", "succeeded", markers=0))) == ["succeeded_without_effect"]


def test_an_expired_command_that_ran_is_reported() -> None:
    assert kinds(check(command("a", "queued", "expired", markers=1))) == [
        "effect_without_execution"]


def test_a_marker_of_a_command_never_submitted_is_reported() -> None:
    assert kinds(check([Marker("ghost")])) == ["unknown_command"]


def test_an_ack_beyond_what_was_appended_is_reported() -> None:
    history = [*evt_frames(2), Acked(N, "evt", 7, 5)]
    violations = check(history)
    assert kinds(violations) == ["ack_unknown_frame"]
    assert violations[0].seq == 5


def test_an_apply_that_no_append_names_is_an_unknown_frame() -> None:
    assert kinds(check([Applied(N, "evt", 7, 1, "s1")])) == ["unknown_frame"]


def test_every_violation_kind_has_a_failing_history_above() -> None:
    source = Path(__file__).read_text()
    for kind in VIOLATION_KINDS:
        assert f'"{kind}"' in source.split("# -- histories that must fail")[1], kind


def test_violations_are_machine_readable() -> None:
    violation = check([Append(N, "evt", "f1", 7, 1), Acked(N, "evt", 7, 1)])[0]
    assert json.loads(violation.to_json()) == {
        "kind": "lost_acked", "node": N, "stream": "evt", "seq": None,
        "detail": "f1 was acked but its effect is absent"}


# -- the record format ----------------------------------------------------------------------


def test_records_round_trip_through_json_lines() -> None:
    history = evt_frames(2) + command("a", "succeeded") + [
        EpochStart(N, "cmd", 4, cursor=2, reason="x"), Claimed(N, "r1", "s1"), Drained(),
        Recovered(N, "evt", 7, 2), Pending(N, "evt", "7.3", 7, 3)]
    lines = [to_json(record) for record in history]
    assert parse_lines(lines) == history


def test_files_from_several_observers_merge_by_their_clock(tmp_path: Path) -> None:
    node_log, ctl_log = tmp_path / "node.jsonl", tmp_path / "ctl.jsonl"
    node_log.write_text(to_json(Append(N, "evt", "f1", 7, 1, t_ns=100)) + "\n"
                        + to_json(Acked(N, "evt", 7, 1, t_ns=300)) + "\n")
    ctl_log.write_text(to_json(Applied(N, "evt", 7, 1, "s1", t_ns=200)) + "\n")
    records = load(node_log, ctl_log)
    assert [record.ev for record in records] == ["append", "applied", "acked"]
    assert check(records) == []


def test_the_writer_stamps_each_record_and_a_reader_gets_them_back(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    writer = HistoryWriter(path)
    for record in evt_frames(2):
        writer.write(record)
    writer.close()
    records = load(path)
    assert all(record.t_ns is not None for record in records)
    assert check(records) == []


@pytest.mark.parametrize("line, message", [
    ('{"ev": "teleport"}', "unknown record kind"),
    ('["append"]', "not a JSON object"),
    ('{"ev": "append", "node": "n", "stream": "evt", "epoch": 1, "q": 1}', "lacks 'frame_id'"),
    ('{"ev": "append", "node": "n", "stream": "up", "frame_id": "f", "epoch": 1, "q": 1}',
     "stream must be one of"),
    ('{"ev": "append", "node": "n", "stream": "evt", "frame_id": "f", "epoch": 1, "q": 0}',
     "q counts from 1"),
    ('{"ev": "acked", "node": "n", "stream": "evt", "epoch": -1, "q": 0}', "integer >= 0"),
    ('{"ev": "acked", "node": "n", "stream": "evt", "epoch": true, "q": 0}', "integer >= 0"),
    ('{"ev": "marker", "command_id": 5}', "must be a string"),
    ('{"ev": "marker", ', "line 1"),
])
def test_a_bad_line_is_refused_with_its_line_number(line: str, message: str) -> None:
    with pytest.raises(HistoryError, match=message) as raised:
        parse_lines([line])
    assert str(raised.value).startswith("line 1:")


# -- the command line ---------------------------------------------------------------------


def test_the_command_line_exits_1_and_prints_each_violation(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(to_json(r) for r in [Append(N, "evt", "f1", 7, 1),
                                                    Acked(N, "evt", 7, 1)]) + "\n")
    proc = subprocess.run([sys.executable, "-m", "tether.tools.soak", "check", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert [json.loads(line)["kind"] for line in proc.stdout.splitlines()] == ["lost_acked"]
    assert "2 records, 1 violations (lost_acked 1)" in proc.stderr


def test_the_command_line_exits_0_on_a_clean_history_and_2_on_a_bad_one(
        tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("\n".join(to_json(r) for r in evt_frames(3)) + "\n")
    bad.write_text('{"ev": "append"}\n')
    run = [sys.executable, "-m", "tether.tools.soak", "check"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60,
                        check=False)
    assert (ok.returncode, ok.stdout) == (0, "")
    broken = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert broken.returncode == 2
    assert "line 1" in broken.stderr


# -- a model of a correct sender and receiver over a bad link -------------------------------


class LinkModel:
    """One stream of one node, as PROTOCOL.md §3 runs it, recording its history.

    The link loses and re-delivers frames; connections drop (the sender resends from the
    receiver's cursor, exchanged at the hello); the sender may start a new epoch and
    re-sequence its unacked frames; the receiver skips a frame whose id it applied before
    (the idempotency key), which still moves its cursor. Every history it makes is legal.
    """

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.epoch, self.session, self.frames = 1, 1, 0
        self.outbox: list[tuple[str, int]] = []     # (frame id, q) unacked, in order
        self.position = 0                            # next index of outbox to send
        self.cursor = 0
        self.applied_ids: set[str] = set()
        self.records.append(Claimed(N, "r1", "s1"))

    def append(self) -> None:
        self.frames += 1
        q = self.outbox[-1][1] + 1 if self.outbox else self.cursor_base() + 1
        frame_id = f"f{self.frames}"
        self.outbox.append((frame_id, q))
        self.records.append(Append(N, "evt", frame_id, self.epoch, q))

    def cursor_base(self) -> int:
        # Sequences continue after the last one acked (or appended) in this epoch.
        acked = [r.q for r in self.records
                 if isinstance(r, (Acked, Append)) and r.epoch == self.epoch]
        return max(acked, default=0)

    def send(self, lost: bool) -> None:
        if self.position >= len(self.outbox):
            return
        frame_id, q = self.outbox[self.position]
        self.position += 1
        self.records.append(Sent(N, "evt", self.epoch, q, f"s{self.session}"))
        if not lost:
            self.receive(frame_id, q)

    def receive(self, frame_id: str, q: int) -> None:
        session = f"s{self.session}"
        if q <= self.cursor:
            self.records.append(Duplicate(N, "evt", self.epoch, q, session))
        elif q > self.cursor + 1:
            self.records.append(Gap(N, "evt", self.epoch, q, self.cursor))
        elif frame_id in self.applied_ids:
            self.cursor = q
            self.records.append(Duplicate(N, "evt", self.epoch, q, session))
        else:
            self.cursor = q
            self.applied_ids.add(frame_id)
            self.records.append(Applied(N, "evt", self.epoch, q, session, "r1"))

    def redeliver_old(self) -> None:
        if self.cursor:
            self.receive("?", self.cursor)

    def ack(self) -> None:
        self.records.append(Acked(N, "evt", self.epoch, self.cursor, f"s{self.session}"))
        done = sum(1 for _, q in self.outbox if q <= self.cursor)
        self.outbox = self.outbox[done:]
        self.position = max(0, self.position - done)

    def reconnect(self) -> None:
        self.session += 1
        self.records.append(Claimed(N, "r1", f"s{self.session}"))
        self.ack()                  # the cursors exchanged at the hello
        self.position = 0           # resend every unacked frame from the cursor

    def new_epoch(self) -> None:
        self.epoch += 1
        self.session += 1
        self.records += [Claimed(N, "r1", f"s{self.session}"), EpochStart(N, "evt", self.epoch)]
        self.cursor = 0
        self.outbox = [(frame_id, q) for q, (frame_id, _) in enumerate(self.outbox, start=1)]
        self.records += [Append(N, "evt", frame_id, self.epoch, q) for frame_id, q in self.outbox]
        self.position = 0

    def drain(self) -> list[Record]:
        self.reconnect()
        while self.outbox:
            self.send(lost=False)
            self.ack()
        self.records.append(Drained())
        return self.records


ACTIONS = st.lists(st.sampled_from(["append", "append", "send", "send", "lose", "ack",
                                    "redeliver", "reconnect", "epoch"]), max_size=60)


def run_model(actions: list[str]) -> list[Record]:
    model = LinkModel()
    for action in actions:
        if action == "append":
            model.append()
        elif action in ("send", "lose"):
            model.send(lost=action == "lose")
        elif action == "ack":
            model.ack()
        elif action == "redeliver":
            model.redeliver_old()
        elif action == "reconnect":
            model.reconnect()
        else:
            model.new_epoch()
    return model.drain()


@given(ACTIONS)
@settings(max_examples=500, deadline=None)
def test_every_history_of_a_correct_peer_over_a_bad_link_passes(actions: list[str]) -> None:
    assert check(run_model(actions)) == []


@given(ACTIONS, st.data())
@settings(max_examples=200, deadline=None)
def test_dropping_the_apply_of_an_acked_frame_is_always_caught(
        actions: list[str], data: st.DataObject) -> None:
    history = run_model(["append", *actions])
    applies = [i for i, r in enumerate(history) if isinstance(r, Applied)]
    victim = data.draw(st.sampled_from(applies))
    assert "lost_acked" in kinds(check(history[:victim] + history[victim + 1:]))


@given(ACTIONS, st.data())
@settings(max_examples=200, deadline=None)
def test_applying_a_frame_twice_is_always_caught(actions: list[str],
                                                 data: st.DataObject) -> None:
    history = run_model(["append", *actions])
    applies = [i for i, r in enumerate(history) if isinstance(r, Applied)]
    victim = data.draw(st.sampled_from(applies))
    later = data.draw(st.integers(victim + 1, len(history)))
    replayed = [*history[:later], history[victim], *history[later:]]
    assert "duplicate_apply" in kinds(check(replayed))


def test_streaming_merges_files_in_the_same_order_as_loading(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(to_json(r) for r in [
        Append(N, "evt", "f1", 7, 1, t_ns=10), Append(N, "evt", "f2", 7, 2),   # no clock: 10
        Acked(N, "evt", 7, 2, t_ns=40)]) + "\n")
    b.write_text("\n".join(to_json(r) for r in [
        Applied(N, "evt", 7, 1, "s1", t_ns=10), Applied(N, "evt", 7, 2, "s1", t_ns=30)]) + "\n")
    assert list(stream(a, b)) == load(a, b)
    assert [r.ev for r in stream(a, b)] == ["append", "append", "applied", "applied", "acked"]
    assert check(stream(a, b)) == []


def test_streaming_refuses_a_file_out_of_clock_order(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(to_json(Drained(t_ns=20)) + "\n" + to_json(Drained(t_ns=10)) + "\n")
    with pytest.raises(HistoryError, match="line 2: t_ns 10 is earlier"):
        list(stream(path))

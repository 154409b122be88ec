"""The ``file`` channel's wire format and state machines (protocol/filexfer.py), with no
I/O: message round trips, hostile messages and names, every (state, event) pair of both
tables, and a pair helper that moves a file through a Sender and a Receiver, cut anywhere
and resumed."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tether.protocol import filexfer as fx

PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
SHA_EMPTY = hashlib.sha256(b"").hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def offer_for(data: bytes, tid: str = "t1", name: str = "f.bin",
              offset: int | None = None) -> fx.Offer:
    return fx.Offer(tid, name, len(data), sha(data), offset)


def wire(message: fx.Control) -> fx.Control:
    """Through the wire and back, as the peer would see it."""
    return fx.parse_control(fx.encode_control(message))


class Pair:
    """A sender and a receiver over a perfect in-order channel; the receiver's "disk" is a
    bytearray. ``run(cut_at)`` stops the transfer once ``cut_at`` bytes were written."""

    def __init__(self, data: bytes, *, disk: bytes = b"", chunk: int = 1000,
                 window: int = fx.MIN_WINDOW, offer_offset: int | None = None) -> None:
        self.data = data
        self.disk = bytearray(disk)
        self.offer = offer_for(data, offset=offer_offset)
        self.sender = fx.Sender(wire(self.offer), chunk_size=chunk, window=window)  # type: ignore[arg-type]
        offset = fx.resume_offset(self.offer, len(self.disk))
        del self.disk[offset:]
        hasher = hashlib.sha256(bytes(self.disk))
        self.receiver = fx.Receiver(self.offer, hasher, offset, window)
        self.max_in_flight = 0
        self.acks: list[int] = []

    def run(self, cut_at: int | None = None) -> bool | None:
        self.sender.receive(wire(self.receiver.accept()))
        pending: list[bytes] = []
        while not self.sender.all_sent or pending:
            nxt = self.sender.next_chunk()
            if nxt is not None:
                offset, length = nxt
                pending.append(fx.encode_chunk(self.sender.id, offset,
                                               self.data[offset:offset + length]))
                self.sender.sent(offset, length)
                self.max_in_flight = max(self.max_in_flight, self.sender.in_flight)
                continue
            # the window is full (or all is sent): deliver what is in flight
            assert pending, "a sender blocked with nothing in flight would never move"
            for message in pending:
                if cut_at is not None and len(self.disk) >= cut_at:
                    return None
                chunk = fx.parse_chunk(message)
                ack = self.receiver.chunk(chunk)
                self.disk[chunk.offset:chunk.offset] = chunk.payload
                if ack is not None:
                    self.acks.append(ack.offset)
                    self.sender.receive(wire(ack))
            pending.clear()
        ok = self.receiver.done(wire(self.sender.done()))  # type: ignore[arg-type]
        self.sender.receive(wire(self.receiver.committed(ok)))
        return ok


# -- messages ---------------------------------------------------------------------------

@pytest.mark.parametrize("message", [
    fx.Offer("a", "report.pdf", 10, SHA_EMPTY),
    fx.Offer("a-1.b:c_d", "ünïcode name.txt", 0, SHA_EMPTY, 0),
    fx.Get("g", "x"),
    fx.Accept("a", 5, fx.DEFAULT_WINDOW),
    fx.Ack("a", 7),
    fx.Done("a", SHA_EMPTY),
    fx.Verified("a", False, SHA_EMPTY),
    fx.Error("a", "not_found", "no such file"),
    fx.Error(None, "bad_frame", ""),
])
def test_every_control_message_survives_the_wire(message: fx.Control) -> None:
    assert wire(message) == message


@given(tid=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
       offset=st.integers(0, fx.MAX_SIZE), payload=st.binary(max_size=300))
@PROPERTY
def test_a_chunk_survives_the_wire(tid: str, offset: int, payload: bytes) -> None:
    assert fx.parse_chunk(fx.encode_chunk(tid, offset, payload)) == fx.Chunk(tid, offset,
                                                                             payload)


def test_a_full_chunk_fits_below_the_sctp_message_cap() -> None:
    assert len(fx.encode_chunk("x" * 64, fx.MAX_SIZE, b"\0" * fx.MAX_CHUNK)) < 64 << 10


@pytest.mark.parametrize("data", [
    b"", b"\x02abc", b"\x01", b"\x01\x05ab", b"\x01\x02\xff\xfe" + bytes(8),
    b"\x01\x01/" + bytes(8), b"\x01\x00" + bytes(8),
    b"\x01\x01a" + bytes(8) + bytes(fx.MAX_CHUNK + 1),
])
def test_a_hostile_binary_message_is_refused(data: bytes) -> None:
    with pytest.raises(fx.FileXferError) as info:
        fx.parse_chunk(data)
    assert info.value.code in ("bad_frame", "protocol_error")


@pytest.mark.parametrize("text", [
    "", "[]", "null", "{", '"offer"', '{"t": "nope", "id": "a"}', '{"id": "a"}',
    '{"t": "offer", "id": "a", "name": "x", "size": -1, "sha256": "' + "0" * 64 + '"}',
    '{"t": "offer", "id": "a", "name": "x", "size": 1.5, "sha256": "' + "0" * 64 + '"}',
    '{"t": "offer", "id": "a", "name": "x", "size": true, "sha256": "' + "0" * 64 + '"}',
    '{"t": "offer", "id": "a", "name": "x", "size": 1e400, "sha256": "' + "0" * 64 + '"}',
    '{"t": "offer", "id": "a", "name": "x", "size": NaN, "sha256": "' + "0" * 64 + '"}',
    '{"t": "offer", "id": "a", "name": "x", "size": 5, "offset": 6, "sha256": "' +
    "0" * 64 + '"}',
    '{"t": "offer", "id": "a", "name": "x", "size": 1, "sha256": "' + "A" * 64 + '"}',
    '{"t": "offer", "id": "a", "name": "x", "size": 1, "sha256": "abc"}',
    '{"t": "offer", "id": "a", "name": "x", "size": ' + str(fx.MAX_SIZE + 1) +
    ', "sha256": "' + "0" * 64 + '"}',
    '{"t": "accept", "id": "a", "offset": -1, "window": 1048576}',
    '{"t": "accept", "id": "a", "offset": 0, "window": 1}',
    '{"t": "accept", "id": "a", "offset": 0}',
    '{"t": "ack", "id": "../x", "offset": 0}',
    '{"t": "ack", "id": "' + "a" * 65 + '", "offset": 0}',
    '{"t": "verified", "id": "a", "ok": 1, "sha256": "' + "0" * 64 + '"}',
    '{"t": "done", "id": "a"}',
    "[" * 10_000,
    '{"t": "ack", "id": "a", "offset": 0, "pad": "' + "x" * fx.MAX_CONTROL_BYTES + '"}',
])
def test_a_hostile_control_message_is_refused_as_bad_frame(text: str) -> None:
    with pytest.raises(fx.FileXferError) as info:
        fx.parse_control(text)
    assert info.value.code in ("bad_frame", "invalid_request")


def test_a_refusal_names_the_transfer_when_it_could_read_its_id() -> None:
    with pytest.raises(fx.FileXferError) as info:
        fx.parse_control(json.dumps({"t": "ack", "id": "t7", "offset": -3}))
    assert info.value.transfer_id == "t7"


def test_an_error_with_an_unknown_code_still_ends_the_transfer_as_internal() -> None:
    err = fx.parse_control(json.dumps({"t": "error", "id": "a", "code": "<script>",
                                       "message": 5}))
    assert err == fx.Error("a", "internal", "")


@pytest.mark.parametrize("name", [
    "../etc/passwd", "/etc/passwd", "a/b", "a\\b", "..", ".", ".bashrc", "", "x\0y",
    "line\nbreak", "tab\tname", "rtl\u202efdp.exe", "x" * (fx.MAX_NAME_BYTES + 1),
    "é" * (fx.MAX_NAME_BYTES // 2 + 1), "e\u0301", None, 5, ["a"], "\ud800",
])
def test_a_hostile_file_name_is_refused(name: object) -> None:
    with pytest.raises(fx.FileXferError) as info:
        fx.safe_name(name)
    assert info.value.code == "invalid_request"


def test_a_hostile_name_in_an_offer_is_refused_with_its_transfer_id() -> None:
    with pytest.raises(fx.FileXferError) as info:
        fx.parse_control(json.dumps({"t": "offer", "id": "up1", "name": "../../x",
                                     "size": 1, "sha256": "0" * 64}))
    assert (info.value.code, info.value.transfer_id) == ("invalid_request", "up1")


@pytest.mark.parametrize("name", ["report.pdf", "a b c", "x..y", "ünïcode", "x" * 200,
                                  "photo (1).JPG", "-rf"])
def test_a_plain_file_name_is_kept_as_given(name: str) -> None:
    assert fx.safe_name(name) == name


def test_the_partial_file_is_named_by_its_content() -> None:
    assert fx.part_name("a.bin", "ab" * 32) == "a.bin.abababababababab.part"
    assert len(fx.part_name("x" * fx.MAX_NAME_BYTES, "0" * 64).encode()) <= 255


# -- state machines ---------------------------------------------------------------------

SENDER_SPEC = {  # docs/protocol.md, written out by hand
    (fx.State.OFFERED, fx.Event.ACCEPT): fx.State.SENDING,
    (fx.State.OFFERED, fx.Event.FAIL): fx.State.FAILED,
    (fx.State.SENDING, fx.Event.CHUNK): fx.State.SENDING,
    (fx.State.SENDING, fx.Event.ACK): fx.State.SENDING,
    (fx.State.SENDING, fx.Event.DONE): fx.State.FINISHING,
    (fx.State.SENDING, fx.Event.FAIL): fx.State.FAILED,
    (fx.State.FINISHING, fx.Event.ACK): fx.State.FINISHING,
    (fx.State.FINISHING, fx.Event.VERIFIED): fx.State.VERIFIED,
    (fx.State.FINISHING, fx.Event.FAIL): fx.State.FAILED,
}
RECEIVER_SPEC = {
    (fx.State.SENDING, fx.Event.CHUNK): fx.State.SENDING,
    (fx.State.SENDING, fx.Event.DONE): fx.State.FINISHING,
    (fx.State.SENDING, fx.Event.FAIL): fx.State.FAILED,
    (fx.State.FINISHING, fx.Event.VERIFIED): fx.State.VERIFIED,
    (fx.State.FINISHING, fx.Event.FAIL): fx.State.FAILED,
}


@pytest.mark.parametrize("table,spec", [(fx.SENDER, SENDER_SPEC),
                                        (fx.RECEIVER, RECEIVER_SPEC)])
@pytest.mark.parametrize("state", list(fx.State))
@pytest.mark.parametrize("event", list(fx.Event))
def test_every_state_and_event_pair_follows_the_table_or_is_refused(
        table: dict, spec: dict, state: fx.State, event: fx.Event) -> None:
    assert table == spec
    if (state, event) in spec:
        assert fx.step(table, state, event) is spec[(state, event)]
    else:
        with pytest.raises(fx.FileXferError, match=f"{event.value}.*{state.value}"):
            fx.step(table, state, event)


def test_terminal_states_take_nothing() -> None:
    for table in (fx.SENDER, fx.RECEIVER):
        assert not [k for k in table if k[0] in (fx.State.VERIFIED, fx.State.FAILED)]


def test_the_diagram_is_drawn_from_the_table() -> None:
    diagram = fx.mermaid(fx.SENDER, fx.State.OFFERED)
    assert diagram.splitlines()[1] == "    [*] --> offered"
    assert len(diagram.splitlines()) == len(fx.SENDER) + 2


@given(data=st.binary(max_size=9000), chunk=st.integers(1, 2500),
       window=st.integers(fx.MIN_WINDOW, 3 * fx.MIN_WINDOW))
@PROPERTY
def test_a_file_arrives_whole_in_order_within_the_window(data: bytes, chunk: int,
                                                         window: int) -> None:
    pair = Pair(data, chunk=chunk, window=window)
    assert pair.run() is True
    assert bytes(pair.disk) == data
    assert pair.sender.state is fx.State.VERIFIED
    assert pair.receiver.state is fx.State.VERIFIED
    assert pair.max_in_flight <= pair.sender.window
    assert pair.acks == sorted(pair.acks) and (not data or pair.acks[-1] == len(data))


def test_the_window_holds_the_sender_until_an_ack() -> None:
    data = bytes(range(256)) * 1024  # 256 KiB, window of 60 KiB
    pair = Pair(data, chunk=16 << 10, window=fx.MIN_WINDOW)
    pair.sender.receive(wire(pair.receiver.accept()))
    sent = 0
    while (nxt := pair.sender.next_chunk()) is not None:
        pair.sender.sent(*nxt)
        sent += nxt[1]
    assert sent <= fx.MIN_WINDOW and not pair.sender.all_sent
    pair.sender.receive(fx.Ack(pair.sender.id, 16 << 10))
    assert pair.sender.next_chunk() is not None


@given(data=st.binary(min_size=1, max_size=6000), cut=st.integers(0, 6000),
       chunk=st.integers(1, 2000))
@PROPERTY
def test_a_cut_at_any_offset_resumes_to_the_same_sha256(data: bytes, cut: int,
                                                         chunk: int) -> None:
    first = Pair(data, chunk=chunk)
    first.run(cut_at=min(cut, len(data)))
    second = Pair(data, disk=bytes(first.disk), chunk=chunk)
    assert second.receiver.offset == len(first.disk)
    assert second.run() is True
    assert bytes(second.disk) == data and second.receiver.hasher.hexdigest() == sha(data)


def test_a_resume_never_goes_past_the_offers_offset_nor_a_too_long_part() -> None:
    offer = offer_for(b"x" * 100, offset=10)
    assert fx.resume_offset(offer, 50) == 10
    assert fx.resume_offset(offer_for(b"x" * 100), 50) == 50
    assert fx.resume_offset(offer_for(b"x" * 100), 101) == 0
    assert fx.resume_offset(offer_for(b"x" * 100, offset=0), 50) == 0


def test_a_wrong_sha256_is_refused_at_the_end() -> None:
    data = b"payload" * 100
    pair = Pair(data)
    pair.offer = fx.Offer("t1", "f.bin", len(data), sha(b"other"))
    pair.sender = fx.Sender(pair.offer, chunk_size=100, window=fx.MIN_WINDOW)
    pair.receiver = fx.Receiver(pair.offer, hashlib.sha256(), 0, fx.MIN_WINDOW)
    assert pair.run() is False
    assert pair.receiver.state is fx.State.FAILED
    assert pair.sender.state is fx.State.FAILED and pair.sender.verdict is not None


def test_a_prefix_that_is_not_the_files_fails_the_verdict() -> None:
    data = b"abcdef" * 500
    pair = Pair(data, disk=b"X" * 1000)
    assert pair.run() is False


def receiving(data: bytes = b"z" * 5000) -> fx.Receiver:
    return fx.Receiver(offer_for(data), hashlib.sha256(), 0, fx.MIN_WINDOW)


@pytest.mark.parametrize("chunk", [
    fx.Chunk("t1", 1, b"z"),  # not at the expected offset
    fx.Chunk("t1", 4999, b"zz"),  # beyond the size
    fx.Chunk("t1", 0, b""),  # empty
    fx.Chunk("t1", 0, b"z" * 5001),
])
def test_a_chunk_out_of_place_fails_the_receiver(chunk: fx.Chunk) -> None:
    rx = receiving()
    with pytest.raises(fx.FileXferError) as info:
        rx.chunk(chunk)
    assert info.value.code == "protocol_error" and info.value.transfer_id == "t1"
    assert rx.state is fx.State.FAILED
    with pytest.raises(fx.FileXferError):
        rx.chunk(fx.Chunk("t1", 0, b"z"))  # a failed transfer takes nothing more


def test_a_chunk_after_done_is_refused() -> None:
    rx = receiving(b"ab")
    rx.chunk(fx.Chunk("t1", 0, b"ab"))
    assert rx.done(fx.Done("t1", sha(b"ab"))) is True
    with pytest.raises(fx.FileXferError, match="not allowed in state 'finishing'"):
        rx.chunk(fx.Chunk("t1", 2, b"c"))


def test_done_before_every_byte_is_a_refused_verdict() -> None:
    rx = receiving(b"abc")
    rx.chunk(fx.Chunk("t1", 0, b"ab"))
    assert rx.done(fx.Done("t1", sha(b"abc"))) is False


def test_done_naming_another_sha256_is_a_refused_verdict() -> None:
    rx = receiving(b"abc")
    rx.chunk(fx.Chunk("t1", 0, b"abc"))
    assert rx.done(fx.Done("t1", sha(b"abd"))) is False


def sending(size: int = 5000, offset: int | None = None) -> fx.Sender:
    return fx.Sender(fx.Offer("t1", "f", size, "0" * 64, offset), chunk_size=1000,
                     window=fx.MIN_WINDOW)


@pytest.mark.parametrize("message", [
    fx.Accept("t1", 5001, fx.MIN_WINDOW),  # beyond the size
    fx.Ack("t1", 0),  # before accept
    fx.Verified("t1", True, "0" * 64),  # before done
    fx.Offer("t1", "f", 1, "0" * 64),  # not a sender's message
    fx.Get("t1", "f"),
])
def test_a_message_out_of_place_fails_the_sender(message: fx.Control) -> None:
    tx = sending()
    with pytest.raises(fx.FileXferError):
        tx.receive(message)
    assert tx.state is fx.State.FAILED and tx.next_chunk() is None


def test_an_accept_beyond_the_offers_offset_fails_the_sender() -> None:
    tx = sending(offset=100)
    with pytest.raises(fx.FileXferError, match="beyond what was offered"):
        tx.receive(fx.Accept("t1", 101, fx.MIN_WINDOW))


@pytest.mark.parametrize("ack", [-1, 2500])
def test_an_ack_outside_what_was_sent_fails_the_sender(ack: int) -> None:
    tx = sending()
    tx.receive(fx.Accept("t1", 0, fx.MIN_WINDOW))
    tx.sent(0, 1000)
    with pytest.raises(fx.FileXferError, match="outside"):
        tx.receive(fx.Ack("t1", ack))


def test_an_error_from_the_peer_fails_the_sender_in_any_live_state() -> None:
    tx = sending()
    tx.receive(fx.Error("t1", "quota_exceeded", "too big"))
    assert tx.state is fx.State.FAILED


def test_a_verdict_with_another_sha256_is_a_failure_even_if_ok() -> None:
    tx = sending(size=0)
    tx.receive(fx.Accept("t1", 0, fx.MIN_WINDOW))
    tx.done()
    tx.receive(fx.Verified("t1", True, "1" * 64))
    assert tx.state is fx.State.FAILED


def test_the_sender_refuses_to_skip_or_finish_early() -> None:
    tx = sending()
    tx.receive(fx.Accept("t1", 0, fx.MIN_WINDOW))
    with pytest.raises(ValueError):
        tx.sent(1000, 1000)
    with pytest.raises(ValueError):
        tx.done()


def test_docs_protocol_md_shows_both_tables_as_they_are() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    assert fx.mermaid(fx.SENDER, fx.State.OFFERED) in doc
    assert fx.mermaid(fx.RECEIVER, fx.State.SENDING) in doc


class TransferModel(RuleBasedStateMachine):
    """A sender and a receiver over an ordered channel whose deliveries, each way, happen
    whenever hypothesis likes: the window holds, acks never run ahead of the bytes, and
    the transfer can always move until it is verified."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytes(range(256)) * 700  # 179,200 bytes: several windows
        offer = offer_for(self.data)
        self.sender = fx.Sender(offer, chunk_size=7000, window=fx.MIN_WINDOW)
        self.receiver = fx.Receiver(offer, hashlib.sha256(), 0, fx.MIN_WINDOW)
        self.sender.receive(wire(self.receiver.accept()))
        self.to_receiver: list[bytes | str] = []
        self.to_sender: list[fx.Control] = []
        self.disk = bytearray()

    @rule()
    def send_a_chunk(self) -> None:
        nxt = self.sender.next_chunk()
        if nxt is not None:
            offset, length = nxt
            self.to_receiver.append(fx.encode_chunk("t1", offset,
                                                    self.data[offset:offset + length]))
            self.sender.sent(offset, length)
        elif self.sender.all_sent:
            self.to_receiver.append(fx.encode_control(self.sender.done()))

    @rule()
    def deliver_to_the_receiver(self) -> None:
        if not self.to_receiver:
            return
        message = self.to_receiver.pop(0)
        if isinstance(message, str):
            done = fx.parse_control(message)
            assert isinstance(done, fx.Done)
            self.to_sender.append(wire(self.receiver.committed(self.receiver.done(done))))
            return
        chunk = fx.parse_chunk(message)
        ack = self.receiver.chunk(chunk)
        self.disk += chunk.payload
        if ack is not None:
            self.to_sender.append(wire(ack))

    @rule()
    def deliver_to_the_sender(self) -> None:
        if self.to_sender:
            self.sender.receive(self.to_sender.pop(0))

    @invariant()
    def the_window_and_the_acks_hold(self) -> None:
        assert self.sender.in_flight <= self.sender.window
        assert self.sender.acked <= self.receiver.offset <= self.sender.offset
        assert bytes(self.disk) == self.data[:self.receiver.offset]

    @invariant()
    def something_can_always_move(self) -> None:
        if self.sender.state is fx.State.VERIFIED:
            assert self.receiver.state is fx.State.VERIFIED and bytes(self.disk) == self.data
            return
        stuck = (self.sender.next_chunk() is None and not self.sender.all_sent
                 and not self.to_receiver and not self.to_sender)
        assert not stuck, "a deadlock: the window is full and no ack is coming"


TransferModel.TestCase.settings = settings(max_examples=60, stateful_step_count=120,
                                           deadline=None, database=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_the_transfer_model = TransferModel.TestCase

"""Hello signing (PROTOCOL.md §4): the signed message is bound to the nonce, the controller
and the node, byte for byte as the page spells it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.protocol.signing import (
    HELLO_CONTEXT,
    hello_message,
    load_private_key,
    private_key_raw,
    public_key_raw,
    sign_hello,
    verify_hello,
)

PROPERTY = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))
NONCE = bytes(range(200, 232))

seeds = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=32, max_size=32)
controller_ids = st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s)
node_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)


def signed(seed: bytes = SEED, nonce: bytes = NONCE, controller_id: str = "ctl-1",
           node_id: str = "node-a") -> bytes:
    return sign_hello(load_private_key(seed), nonce, controller_id, node_id)


def pub(seed: bytes = SEED) -> bytes:
    return public_key_raw(load_private_key(seed))


def test_the_signed_message_is_laid_out_byte_for_byte_as_protocol_md_says() -> None:
    message = hello_message(NONCE, "ctl-1", "node-a")
    assert message == b"tether.v1.hello\x00" + NONCE + b"\x00" + b"ctl-1" + b"\x00" + b"node-a"
    assert HELLO_CONTEXT == b"tether.v1.hello\x00"
    assert len(message) == 16 + 32 + 1 + 5 + 1 + 6


def test_ids_are_utf8_in_the_signed_message() -> None:
    assert hello_message(NONCE, "k\u00f6ln", "n").endswith(b"k\xc3\xb6ln\x00n")


def test_a_signature_made_over_the_spec_message_by_hand_verifies() -> None:
    """A third-party node that builds the message from PROTOCOL.md alone interoperates."""
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    message = b"tether.v1.hello\x00" + NONCE + b"\x00ctl-1\x00node-a"
    assert verify_hello(pub(), key.sign(message), NONCE, "ctl-1", "node-a")
    assert signed() == key.sign(message)  # Ed25519 is deterministic


@PROPERTY
@given(seeds, nonces, controller_ids, node_ids)
def test_a_hello_signature_verifies_with_the_signers_public_key(
        seed: bytes, nonce: bytes, controller_id: str, node_id: str) -> None:
    sig = signed(seed, nonce, controller_id, node_id)
    assert len(sig) == 64
    assert verify_hello(pub(seed), sig, nonce, controller_id, node_id)


@PROPERTY
@given(st.integers(min_value=0, max_value=31), st.integers(min_value=0, max_value=7))
def test_verification_fails_for_a_changed_nonce_bit(byte: int, bit: int) -> None:
    nonce = bytearray(NONCE)
    nonce[byte] ^= 1 << bit
    assert not verify_hello(pub(), signed(), bytes(nonce), "ctl-1", "node-a")


@PROPERTY
@given(st.integers(min_value=0, max_value=63), st.integers(min_value=1, max_value=255))
def test_verification_fails_for_any_changed_signature_byte(byte: int, flip: int) -> None:
    sig = bytearray(signed())
    sig[byte] ^= flip
    assert not verify_hello(pub(), bytes(sig), NONCE, "ctl-1", "node-a")


@pytest.mark.parametrize("controller_id", ["ctl-2", "ctl-1 ", "", "CTL-1", "ctl-1\x00"])
def test_verification_fails_for_another_controller_id(controller_id: str) -> None:
    assert not verify_hello(pub(), signed(), NONCE, controller_id, "node-a")


@pytest.mark.parametrize("node_id", ["node-b", "node-a-", "", "node"])
def test_verification_fails_for_another_node_id(node_id: str) -> None:
    assert not verify_hello(pub(), signed(), NONCE, "ctl-1", node_id)


def test_the_separators_keep_controller_and_node_ids_apart() -> None:
    assert not verify_hello(pub(), signed(controller_id="ctl", node_id="1-node-a"), NONCE,
                            "ctl-1", "node-a")


def test_verification_fails_for_a_different_key() -> None:
    assert not verify_hello(pub(OTHER_SEED), signed(), NONCE, "ctl-1", "node-a")


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33, b"\xff" * 64])
def test_a_malformed_public_key_fails_verification_instead_of_raising(key: bytes) -> None:
    assert not verify_hello(key, signed(), NONCE, "ctl-1", "node-a")


@pytest.mark.parametrize("sig", [b"", b"\x00" * 64, b"\x00" * 63])
def test_a_malformed_signature_fails_verification_instead_of_raising(sig: bytes) -> None:
    assert not verify_hello(pub(), sig, NONCE, "ctl-1", "node-a")


def test_a_truncated_signature_fails_verification() -> None:
    assert not verify_hello(pub(), signed()[:-1], NONCE, "ctl-1", "node-a")


def test_a_private_key_round_trips_through_its_32_raw_bytes() -> None:
    key = load_private_key(SEED)
    assert private_key_raw(key) == SEED
    assert len(public_key_raw(key)) == 32


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33])
def test_loading_a_private_key_of_the_wrong_length_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match=str(len(raw))):
        load_private_key(raw)

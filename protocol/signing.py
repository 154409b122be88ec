"""Ed25519 hello signing and verification (PROTOCOL.md §4).

The signed message binds the challenge nonce, the controller and the node:
``b"tether.v1.hello\\x00" + nonce + b"\\x00" + controller_id + b"\\x00" + node_id``.

Verification is strict (:mod:`.keys`): a key or an R of small order, a non-canonical
encoding and S >= L are refused before OpenSSL checks the equation, because OpenSSL accepts
small-order keys (an all-zero key verified a constant signature).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import BadFrame
from .keys import check_ed25519_signature, check_key_form

HELLO_CONTEXT = b"tether.v1.hello\x00"


def hello_message(nonce: bytes, controller_id: str, node_id: str) -> bytes:
    return HELLO_CONTEXT + nonce + b"\x00" + controller_id.encode() + b"\x00" + node_id.encode()


def sign_hello(private_key: Ed25519PrivateKey, nonce: bytes, controller_id: str,
               node_id: str) -> bytes:
    return private_key.sign(hello_message(nonce, controller_id, node_id))


def verify_hello(public_key_raw: bytes, sig: bytes, nonce: bytes, controller_id: str,
                 node_id: str) -> bool:
    """True only for a valid signature by ``public_key_raw`` (32 raw bytes) that passes the
    strict checks of :mod:`.keys` (key and R not of small order, canonical, S < L)."""
    return verify_strict(public_key_raw, sig, hello_message(nonce, controller_id, node_id))


def verify_strict(public_key_raw: bytes, sig: bytes, message: bytes) -> bool:
    """Strict Ed25519 verification: :mod:`.keys` Rules 1, 2 and 4 on the key and the
    signature, then OpenSSL (cofactorless, as RFC 8032 §5.1.7 without the factor 8). Never
    raises for any input."""
    try:
        check_key_form(public_key_raw)
        check_ed25519_signature(sig)
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(sig, message)
    except (BadFrame, InvalidSignature, ValueError, TypeError):
        return False
    return True


def public_key_raw(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)


def private_key_raw(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())


def load_private_key(raw: bytes) -> Ed25519PrivateKey:
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 private key is 32 raw bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
